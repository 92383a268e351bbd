"""CPU versions of the SOFT / SOFT-Norm cells (models/softmax_free_transformer.py) and their rules.

* ``GaussianKernel``: its gradient written out, with the sums as matmuls (autodiff's gradient of the broadcast
  |a|² + |b|² reduces over the landmark and token axes with ReduceSum, slow on CPU: about 4% of a SOFT step);
* ``NewtonInverse`` / ``NewtonInverseNorm``: every Newton step of every matrix in one SOFT kernel call (the same
  arithmetic; the analytic backward of the portable cell is kept);
* ``SoftAttention``: the per-head local convolution runs on the channels-last tokens as they are, as the SOFT
  kernel (no transposes into [B·d, h, H, W] and back), or, without the kernels, with the flipped-kernel input
  gradient of ``layers.HeadwiseConvFn``.
"""
import mindspore as ms
from mindspore import ops

from ..softmax_free_transformer import GaussianKernel, NewtonInverse, NewtonInverseNorm, SoftAttention, gaussian_kernel
from .layers import Float32Kernel, HeadwiseConvFn, KernelConvFn, become
from .reduce import sum_last_axis

__all__ = ["FastGaussianKernel", "KernelNewtonInverse", "KernelNewtonInverseNorm", "ChannelsLastSoftAttention",
           "RULES"]

_bmm = ops.BatchMatMul()
_bmm_a_t = ops.BatchMatMul(transpose_a=True)


class FastGaussianKernel(GaussianKernel):
    """``gaussian_kernel(a, b)`` with its gradient written out: for W = dL/dG ⊙ G,

        dL/da = W·b - rowsum(W) ⊙ a,    dL/db = Wᵀ·a - colsum(W) ⊙ b,

    the sums as matmuls against ones. Input a [..., n, d], b [..., m, d] -> [..., n, m].
    """

    def construct(self, a, b):
        return gaussian_kernel(a, b)

    def bprop(self, a, b, out, dout):
        weights = dout * out                                                      # [..., n, m]
        row_sums = sum_last_axis(weights)                                        # [..., n, 1]
        col_sums = _bmm_a_t(weights, ops.ones(weights.shape[:-1] + (1,), weights.dtype))  # [..., m, 1]
        return _bmm(weights, b) - row_sums * a, _bmm_a_t(weights, a) - col_sums * b


class KernelNewtonInverse(NewtonInverse):
    """``NewtonInverse`` as one SOFT kernel call for float32 (attribute ``kernel``); the backward is the portable
    cell's."""

    def construct(self, mat):
        if mat.dtype == ms.float32:
            return self.kernel(mat, ms.Tensor([self.iters], ms.float32))
        return NewtonInverse.construct(self, mat)


class KernelNewtonInverseNorm(NewtonInverseNorm):
    """``NewtonInverseNorm`` as one SOFT kernel call for float32 (attribute ``kernel``); the backward is the
    portable cell's."""

    def construct(self, mat):
        if mat.dtype == ms.float32:
            return self.kernel(mat, ms.Tensor([self.iters, self.max_halvings], ms.float32))
        return NewtonInverseNorm.construct(self, mat)


class ChannelsLastSoftAttention(SoftAttention):
    """``SoftAttention`` whose local term runs the SOFT kernel on v's channels-last tokens (attribute
    ``channels_last_fn``: the SOFT kernel's per-head convolution of a channels-last map x [B, H, W, h·d] with its
    backward, ``layers.KernelConvFn``), for float32."""

    def local_term(self, v, height, width):
        if v.dtype != ms.float32:
            return SoftAttention.local_term(self, v, height, width)
        b, n, dim = v.shape
        out = self.channels_last_fn(v.reshape(b, height, width, dim), self.local_conv.weight)
        return out.reshape(b, n, dim)


# ---------------------------------------------------------------------------------------------------- rules

def gaussian(cell, kernels):
    return FastGaussianKernel() if type(cell) is GaussianKernel else None


def newton_inverse(cell, kernels):
    if kernels.soft is None:
        return None
    if type(cell) is NewtonInverse:
        return become(cell, KernelNewtonInverse, kernel=kernels.soft.newton_inverse)
    if type(cell) is NewtonInverseNorm:
        return become(cell, KernelNewtonInverseNorm, kernel=kernels.soft.newton_inverse_norm)
    return None


def soft_attention(cell, kernels):
    if type(cell) is not SoftAttention:
        return None
    if kernels.soft is not None:
        local_conv = KernelConvFn(kernels.soft.local_conv, kernels.soft.local_conv_filter_grad)
        return become(cell, ChannelsLastSoftAttention, channels_last_fn=local_conv)
    conv = cell.local_conv
    if not isinstance(conv.conv2d, Float32Kernel):
        conv.conv2d = Float32Kernel(HeadwiseConvFn(conv.in_channels, conv.kernel_size[0]), conv.conv2d)
    return cell


RULES = (gaussian, newton_inverse, soft_attention)
