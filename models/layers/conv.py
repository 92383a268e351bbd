"""Per-head convolution with a faster backward on CPU."""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeUniform, initializer
from mindspore.ops.operations import _grad_ops

__all__ = ["HeadwiseConv"]


class _HeadwiseConvFn(nn.Cell):
    """Grouped k x k convolution (one channel per group, 'same' padding) with a faster backward.

    Its input gradient is the forward convolution of dy with the spatially flipped kernel (CPU's
    Conv2DBackpropInput is several times slower than Conv2D for this shape).
    """

    def __init__(self, channels, kernel):
        super().__init__()
        pad = kernel // 2
        self.conv = ops.Conv2D(channels, (kernel, kernel), pad_mode="pad", pad=pad, group=channels)
        self.filter_grad = _grad_ops.Conv2DBackpropFilter(channels, (kernel, kernel), pad_mode="pad", pad=pad,
                                                          pad_list=(pad, pad, pad, pad), group=channels)

    def construct(self, x, weight):
        return self.conv(x, weight)

    def bprop(self, x, weight, out, dout):
        dx = self.conv(dout, ops.flip(weight, (2, 3)))
        dw = self.filter_grad(dout, x, weight.shape)
        return ops.cast(dx, x.dtype), ops.cast(dw, weight.dtype)


class HeadwiseConv(nn.Cell):
    """Per-head k x k convolution [B', h, H, W] -> [B', h, H, W] (groups = h, no bias, 'same' padding).

    The parameter is ``weight`` [h, 1, k, k], as in ``nn.Conv2d(h, h, k, group=h, has_bias=False)``.
    """

    def __init__(self, channels, kernel):
        super().__init__()
        self.weight = ms.Parameter(initializer(HeUniform(math.sqrt(5)), (channels, 1, kernel, kernel), ms.float32),
                                   name="weight")
        self.conv_fn = _HeadwiseConvFn(channels, kernel)

    def construct(self, x):
        return self.conv_fn(x, ops.cast(self.weight, x.dtype))
