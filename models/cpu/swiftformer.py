"""CPU versions of the SwiftFormer cells (models/swiftformer.py) and their rules.

Training form:
* ``L2Normalize``: the sums as matmuls and the gradient written out (autodiff's gradient of the broadcast norm
  reduces with ReduceSum, slow on CPU);
* ``ScaledResidual`` without stochastic depth: x + scale * branch as the training kernel, with one gradient
  kernel for the branch and the scale.
Inference form (after ``models.fuse_for_inference``), the kernels of ``swiftformer_cpu.cc``:
* ``Conv`` (3x3 depthwise, stride 1, no bias): the depthwise kernel;
* ``BiasActivation``: bias + ReLU / exact GELU in one pass;
* ``LayerScaleResidual``: x + scale * (z + bias) in one pass;
* ``AdditiveAttentionInference``: the bias, both channel norms and the token weights in one pass over [k; q].
"""
import mindspore as ms
from mindspore import nn, ops

from ..swiftformer import (AdditiveAttentionInference, BiasActivation, Conv, L2Normalize, LayerScaleResidual,
                           ScaledResidual, _L2_EPS)
from .layers import Float32Kernel, become
from .reduce import sum_channels, sum_pixels

__all__ = ["FastL2Normalize", "KernelScaledResidual", "KernelBiasActivation", "KernelLayerScaleResidual",
           "KernelAdditiveAttentionInference", "RULES"]


class FastL2Normalize(nn.Cell):
    """x / max(|x|_2, 1e-12) along axis 1 or (2, 3) of float32 x [B, C, H, W], written as x / sqrt(max(|x|², 1e-24)) (the
    same values) with the sums as matmuls and the gradient written out: for y = x / n,
    dx = (dy - y · Σ(dy ⊙ y)) / n  (dy / n where n is clamped to 1e-12)."""
    def __init__(self, over_channels):
        super().__init__()
        self.over_channels = over_channels

    def _sum(self, x):
        return sum_channels(x) if self.over_channels else sum_pixels(x)

    def construct(self, x):
        return x / ops.sqrt(ops.maximum(self._sum(x * x), _L2_EPS * _L2_EPS))

    def bprop(self, x, out, dout):
        squares = self._sum(x * x)
        norm = ops.sqrt(ops.maximum(squares, _L2_EPS * _L2_EPS))
        along = ops.cast(squares > _L2_EPS * _L2_EPS, x.dtype) * self._sum(dout * out)
        return ((dout - out * along) / norm,)


class _ScaledResidualFn(nn.Cell):
    """(x, scale, branch) -> x + scale * branch as the training kernel, with one gradient kernel for the branch and
    the scale (the layer scale's gradient is a reduction over batch and pixels)."""

    def __init__(self, training_kernels):
        super().__init__()
        self.scale_residual = training_kernels.scale_residual
        self.scale_residual_grad = training_kernels.scale_residual_grad

    def construct(self, x, scale, branch):
        return self.scale_residual(x, branch, scale)

    def bprop(self, x, scale, branch, out, dout):
        dbranch, dscale = self.scale_residual_grad(dout, branch, scale)
        return dout, dscale, dbranch


class KernelScaledResidual(ScaledResidual):
    """``ScaledResidual`` (no stochastic depth) through ``_ScaledResidualFn`` for float32 (attribute ``fn``)."""

    def construct(self, x, scale, branch):
        if x.dtype == ms.float32:
            return self.fn(x, scale, branch)
        return x + scale * branch


class KernelBiasActivation(BiasActivation):
    """``BiasActivation`` as one kernel pass for float32 (attribute ``kernel``)."""

    def construct(self, x):
        if x.dtype == ms.float32:
            return self.kernel(x, self.bias)
        return self.act(x + self.bias)


class KernelLayerScaleResidual(LayerScaleResidual):
    """``LayerScaleResidual`` as one kernel pass for float32 (attribute ``kernel``)."""

    def construct(self, x, z):
        if x.dtype == ms.float32:
            return self.kernel(x, z, self.scale, self.bias)
        return x + self.scale * (z + self.bias)


class KernelAdditiveAttentionInference(AdditiveAttentionInference):
    """``AdditiveAttentionInference`` whose bias, channel norms and token weights come from one kernel pass over
    [k; q] for float32 (attribute ``key_query_norm``)."""

    def _keys_queries(self, x):
        if x.dtype != ms.float32:
            return AdditiveAttentionInference._keys_queries(self, x)
        b, c, h, w = x.shape
        kq = ops.conv2d(x, self.key_query_weight).reshape(b, 2 * c, h * w)
        return self.key_query_norm(kq, self.key_query_bias, self.global_query_weight)


# ---------------------------------------------------------------------------------------------------- rules

def l2_normalize(cell, kernels):
    return Float32Kernel(FastL2Normalize(cell.over_channels), cell) if type(cell) is L2Normalize else None


def scaled_residual(cell, kernels):
    if type(cell) is ScaledResidual and kernels.training is not None and isinstance(cell.drop_path, nn.Identity):
        return become(cell, KernelScaledResidual, fn=_ScaledResidualFn(kernels.training))
    return None


def _is_depthwise3x3(conv):
    out_ch, in_per_group, kh, kw = conv.weight.shape
    return (conv.bias is None and in_per_group == 1 and (kh, kw) == (3, 3) and conv.group == out_ch
            and conv.stride == 1 and conv.padding == 1)


def inference_cells(cell, kernels):
    inference = kernels.inference
    if inference is None:
        return None
    if type(cell) is Conv and not isinstance(cell.conv2d, Float32Kernel) and _is_depthwise3x3(cell):
        cell.conv2d = Float32Kernel(inference.depthwise3x3, cell.conv2d)
        return cell
    if type(cell) is BiasActivation:
        kernel = inference.bias_relu if cell.activation == "relu" else inference.bias_gelu
        return become(cell, KernelBiasActivation, kernel=kernel)
    if type(cell) is LayerScaleResidual:
        return become(cell, KernelLayerScaleResidual, kernel=inference.scale_residual)
    if type(cell) is AdditiveAttentionInference:
        return become(cell, KernelAdditiveAttentionInference, key_query_norm=inference.key_query_norm)
    return None


RULES = (l2_normalize, scaled_residual, inference_cells)
