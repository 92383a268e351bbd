"""Convolutions with faster backwards on CPU: ``Conv2d`` (its bias gradient) and the per-head ``HeadwiseConv``."""
import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeUniform, initializer
from mindspore.ops.operations import _grad_ops

from ..kernels import soft as soft_kernels
from .bias import BiasAdd

__all__ = ["Conv2d", "HeadwiseConv"]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters, initialisers, outputs and construct) whose bias is added by
    ``layers.BiasAdd`` (a faster float32 bias gradient on CPU). x [B, C_in, H, W] -> [B, C_out, H', W']."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias_add = BiasAdd()


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


class _ChannelsLastHeadwiseConvFn(nn.Cell):
    """The per-head convolution of a channels-last map x [B, H, W, h·d] as the SOFT CPU kernel, with its
    backward: the input gradient is the same kernel with the flipped weight, the weight gradient its own kernel.
    """

    def __init__(self, kernels):
        super().__init__()
        self.local_conv = kernels.local_conv
        self.filter_grad = kernels.local_conv_filter_grad

    def construct(self, x, weight):
        return self.local_conv(x, weight)

    def bprop(self, x, weight, out, dout):
        return self.local_conv(dout, ops.flip(weight, (2, 3))), self.filter_grad(dout, x, weight)


class HeadwiseConv(nn.Cell):
    """Per-head k x k convolution [B', h, H, W] -> [B', h, H, W] (groups = h, no bias, 'same' padding).

    The parameter is ``weight`` [h, 1, k, k], as in ``nn.Conv2d(h, h, k, group=h, has_bias=False)``.
    ``on_tokens`` applies the same convolution to every head dimension of a token map [B, H·W, h·d]; with the
    SOFT CPU kernels built and allowed (models/kernels/soft.py) it runs on the tokens as they are, without
    the transposes into [B·d, h, H, W] (``use_cpu_kernels`` False gives the standard operators, as export does).
    """

    def __init__(self, channels, kernel):
        super().__init__()
        self.weight = ms.Parameter(initializer(HeUniform(math.sqrt(5)), (channels, 1, kernel, kernel), ms.float32),
                                   name="weight")
        self.conv_fn = _HeadwiseConvFn(channels, kernel)
        cpu = soft_kernels.load()
        self.use_cpu_kernels = cpu is not None
        self.channels_last_fn = _ChannelsLastHeadwiseConvFn(cpu) if cpu is not None else None

    def construct(self, x):
        return self.conv_fn(x, ops.cast(self.weight, x.dtype))

    def on_tokens(self, tokens, height, width):
        """tokens [B, H·W, h·d] (channel c in head c // d) -> [B, H·W, h·d]."""
        b, n, dim = tokens.shape
        heads = self.weight.shape[0]
        if self.use_cpu_kernels and tokens.dtype == ms.float32:
            return self.channels_last_fn(tokens.reshape(b, height, width, dim), self.weight).reshape(b, n, dim)
        grid = tokens.reshape(b, n, heads, dim // heads).transpose(0, 3, 2, 1).reshape(-1, heads, height, width)
        out = self.conv_fn(grid, ops.cast(self.weight, grid.dtype)).reshape(b, dim // heads, heads, n)
        return out.transpose(0, 3, 2, 1).reshape(b, n, dim)
