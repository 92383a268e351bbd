"""Fully connected layer with a faster bias gradient on CPU."""
import mindspore as ms
from mindspore import nn, ops

__all__ = ["Dense"]


class _BiasAddFn(nn.Cell):
    """y = x + b for x [R, D] and b [D] (float32), with the bias gradient written as ones[1, R] · dy.

    MindSpore's CPU BiasAddGrad (a column sum) is 10-14x slower than that matmul for the R = B·N rows
    of a transformer stage (25 ms against 1.8 ms for 25,088 x 256); it was 7% of a SOFT training step.
    """

    def __init__(self):
        super().__init__()
        self.bias_add = ops.BiasAdd()

    def construct(self, x, bias):
        return self.bias_add(x, bias)

    def bprop(self, x, bias, out, dout):
        dbias = ops.matmul(ops.ones((1, dout.shape[0]), dout.dtype), dout).reshape(bias.shape)
        return dout, dbias


class Dense(nn.Dense):
    """``nn.Dense`` (same parameters ``weight`` [out, in] / ``bias`` [out], initialisers and outputs) whose bias
    gradient is a matmul against ones in float32 (a float16 layer under mixed precision keeps ``BiasAdd``).
    x [..., in] -> [..., out]."""

    def __init__(self, in_channels, out_channels, weight_init=None, bias_init=None, has_bias=True):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init, has_bias=has_bias)
        self.bias_add_fn = _BiasAddFn() if has_bias else None

    def construct(self, x):
        # nn.Dense.construct with the bias step chosen by dtype: a bprop cell inside a float16 (mixed-precision)
        # layer hands float16 gradients to float32 parameters, so swapping nn.Dense's bias_add is not enough
        shape = x.shape
        rows = x.reshape(-1, shape[-1]) if len(shape) != 2 else x
        out = self.matmul(rows, self.weight)
        if self.has_bias:
            out = self.bias_add_fn(out, self.bias) if out.dtype == ms.float32 else self.bias_add(out, self.bias)
        return out.reshape(shape[:-1] + (out.shape[-1],)) if len(shape) != 2 else out
