"""Layer normalisation with a faster backward on CPU."""
import mindspore as ms
from mindspore import nn, ops

from ..kernels import soft as soft_kernels

__all__ = ["LayerNorm"]


class _LayerNormFn(nn.Cell):
    """Layer normalisation over the last axis with a hand-written backward.

    MindSpore's CPU LayerNormGrad is the slowest kernel of a SOFT training step; this backward does
    the same maths with element-wise ops and does its reductions as matmuls against ones:
    dx = r·(g - mean(g) - x̂·mean(g·x̂)) with g = dy·γ, x̂ = (x - μ)·r; dγ = Σ dy·x̂; dβ = Σ dy.
    With the SOFT CPU kernels built and allowed (models/kernels/soft.py) the same backward is one kernel
    (one pass over x and dy); ``use_cpu_kernels`` False gives the operators.
    """
    keep_fp32 = True

    def __init__(self, epsilon):
        super().__init__()
        self.epsilon = epsilon
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=epsilon)
        cpu = soft_kernels.load()
        self.use_cpu_kernels = cpu is not None
        self.kernel_grad = cpu.layer_norm_grad if cpu is not None else None

    def construct(self, x, gamma, beta):
        return self.layer_norm(x, gamma, beta)[0]

    def bprop(self, x, gamma, beta, out, dout):
        dim = x.shape[-1]
        rows = x.reshape(-1, dim)
        grad_rows = dout.reshape(-1, dim)
        if self.use_cpu_kernels:
            dx, dgamma, dbeta = self.kernel_grad(rows, grad_rows, gamma, ms.Tensor([self.epsilon], ms.float32))
            return dx.reshape(x.shape), dgamma, dbeta
        row_mean = ops.ones((dim, 1), x.dtype) / dim
        centred = rows - ops.matmul(rows, row_mean)
        rstd = ops.rsqrt(ops.matmul(centred * centred, row_mean) + self.epsilon)
        normed = centred * rstd
        g = grad_rows * gamma
        dx = rstd * (g - ops.matmul(g, row_mean) - normed * ops.matmul(g * normed, row_mean))
        col_sum = ops.ones((1, rows.shape[0]), x.dtype)
        dgamma = ops.matmul(col_sum, grad_rows * normed).reshape(dim)
        dbeta = ops.matmul(col_sum, grad_rows).reshape(dim)
        return dx.reshape(x.shape), dgamma, dbeta


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis (same parameters ``gamma`` / ``beta``) with a faster backward.

    x [..., D] -> [..., D]. Computed in float32 whatever the input dtype (as mixed precision keeps
    normalisation layers); the result has the input's dtype.
    """

    def __init__(self, dim, epsilon):
        super().__init__((dim,), epsilon=epsilon)
        self.norm_fn = _LayerNormFn(epsilon)

    def construct(self, x):
        return ops.cast(self.norm_fn(ops.cast(x, ms.float32), self.gamma, self.beta), x.dtype)
