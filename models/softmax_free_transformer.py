"""Softmax-free attention (SOFT, NeurIPS 2021; SOFT-Norm, IJCV 2024) and the post-norm SOFT block.

Shapes: B batch, h heads, N = H*W tokens, d head dim, m landmarks, D = h*d channels.

The attention replaces softmax(QKᵀ) with a Gaussian kernel and approximates the N x N kernel
matrix through m landmarks, never forming an N x N matrix:

    X = (K1 · pinv(K2)) · (K1ᵀ · V),  K1 = G(Q, L) [B,h,N,m],  K2 = G(L, L) [B,h,m,m]

with the pseudo-inverse computed by Newton iteration.
"""
import math

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal

from .layers import Attention, DropPath, Mlp

__all__ = ["gaussian_kernel", "GaussianKernel", "NewtonInverse", "NewtonInverseNorm", "SoftKernelAttention",
           "SoftAttention", "SoftBlock", "Block"]


# Export note: the attention is written with ops MindSpore's MINDIR and ONNX exporters both handle
# (``ops.div`` rather than a Python number divided by a tensor, which becomes Reciprocal; no Rsqrt; static
# landmark counts so that a dynamic batch axis leaves every other axis known at compile time).


# Batched products with the transposes as operator flags (no transposed copy of either operand)
_bmm = ops.BatchMatMul()
_bmm_a_t = ops.BatchMatMul(transpose_a=True)
_bmm_b_t = ops.BatchMatMul(transpose_b=True)


def gaussian_kernel(a, b):
    """G(a, b)_jk = exp(-||a_j - b_k||² / 2) for a [..., n, d] and b [..., m, d] -> [..., n, m].

    Squared distances are expanded as |a|² + |b|² - 2 a·b (the reference's form).
    """
    a_sq = ops.sum(a * a, -1, keepdim=True)                                      # [..., n, 1]
    b_sq = ops.sum(b * b, -1, keepdim=True).swapaxes(-1, -2)                     # [..., 1, m]
    return ops.exp(-0.5 * (a_sq + b_sq - 2.0 * _bmm_b_t(a, b)))


class GaussianKernel(nn.Cell):
    """``gaussian_kernel(a, b)`` as a cell: a [..., n, d], b [..., m, d] -> [..., n, m]."""

    def construct(self, a, b):
        return gaussian_kernel(a, b)


def _eye_like(mat):
    """Identity [m, m] in mat's dtype for a batch of square matrices mat [..., m, m]."""
    m = mat.shape[-1]
    return ms.Tensor(np.eye(m), mat.dtype)


def _max_row_sum(mat):
    """max_j Σ_k mat_jk per matrix: [..., m, m] -> [..., 1, 1]."""
    return mat.sum(axis=-1, keepdims=True).max(axis=-2, keepdims=True)


def newton_steps(inv, mat, iters):
    """``iters`` Newton-Schulz steps V <- 2V - V·P·V towards P⁻¹ (unrolled: ``iters`` is a Python int)."""
    for _ in range(iters):
        inv = 2.0 * inv - ops.matmul(ops.matmul(inv, mat), inv)
    return inv


class _InverseWithAnalyticGrad(nn.Cell):
    """Base of the Newton inverses: the backward treats the output V as the exact inverse of A,

        dL/dA = -Vᵀ (dL/dV) Vᵀ,

    instead of differentiating through the Newton steps (the paper's and the reference's gradient). This is
    the one bprop of the portable model, and the math needs it: autodiff of ``iters`` unrolled steps would
    keep every intermediate V for the backward (``iters`` times the memory) and give the gradient of the
    truncated iteration rather than of the inverse. Kept in float32 under mixed precision (``keep_fp32``).
    """
    keep_fp32 = True

    def __init__(self, iters=20):
        super().__init__()
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"the Newton iteration count must be a positive int, got {iters!r}")
        self.iters = iters

    def bprop(self, mat, out, dout):
        return (-_bmm_b_t(_bmm_a_t(out, dout), out),)


class NewtonInverse(_InverseWithAnalyticGrad):
    """Pseudo-inverse of SOFT (plain): per matrix A [..., m, m],
    α = 0.9·2 / (max row sum of A)², P = A + 0.01·I, V₀ = α·P, then ``iters`` Newton steps on P.
    """

    def construct(self, mat):
        alpha = ops.div(1.8, ops.square(_max_row_sum(mat)))
        regularised = mat + 0.01 * _eye_like(mat)
        return newton_steps(alpha * regularised, regularised, self.iters)


class NewtonInverseNorm(_InverseWithAnalyticGrad):
    """Pseudo-inverse of SOFT-Norm: per matrix A [..., m, m], α₀ = 2 / (max row sum of A)²;
    α is halved while ||I - A·(αA)||₁ (max absolute column sum) > 1.01, at most ``max_halvings`` times,
    each matrix on its own (so a sample never depends on its batch-mates); V₀ = αA; then Newton on A.
    """

    def __init__(self, iters=20, max_halvings=10):
        super().__init__(iters)
        self.max_halvings = max_halvings

    def construct(self, mat):
        alpha = ops.div(2.0, ops.square(_max_row_sum(mat)))
        eye = _eye_like(mat)
        mat_sq = ops.matmul(mat, mat)  # A·(αA) = α·A², so A² is formed once for every trial α
        for _ in range(self.max_halvings):
            col_norm = ops.abs(eye - alpha * mat_sq).sum(axis=-2, keepdims=True).max(axis=-1, keepdims=True)
            alpha = ops.where(col_norm > 1.01, 0.5 * alpha, alpha)
        return newton_steps(alpha * mat, mat, self.iters)


class SoftKernelAttention(nn.Cell):
    """The landmark / Gaussian-kernel part of SOFT attention, computed in float32.

    Input q, v [B, h, N, d] with N = H*W; output [B, h, N, d] (before the local conv term).

    Args:
        head_dim: d.
        ratio: landmark stride r: landmarks come from a Conv2d(d, d, r, stride r) over q's H x W map.
        newton_iters: Newton steps of the pseudo-inverse (a Python constant).
        norm_inverse: SOFT-Norm (D·pinv_N(K2)·D with D = diag(row sums of K2)^-1/2) instead of SOFT.
        landmark_grid: None (default) gives m = (H/r)(W/r) landmarks, growing with the input. An int g
            first average-pools q's map down to at most (g·r) x (g·r), so that m <= g² whatever the input
            size and the cost is linear in N. The parameters are the same either way, and at the size the
            grid was chosen for (g·r = H) both give the same result.
    """
    keep_fp32 = True

    def __init__(self, head_dim, ratio, newton_iters=20, norm_inverse=False, landmark_grid=None):
        super().__init__()
        self.ratio = ratio
        self.landmark_grid = landmark_grid
        self.landmark = nn.Conv2d(head_dim, head_dim, ratio, stride=ratio, pad_mode="valid", has_bias=False)
        self.landmark_norm = nn.LayerNorm((head_dim,), epsilon=1e-5)
        self.landmark_act = nn.GELU(approximate=False)
        self.norm_inverse = norm_inverse
        self.inverse = NewtonInverseNorm(newton_iters) if norm_inverse else NewtonInverse(newton_iters)
        self.gaussian = GaussianKernel()

    def num_landmarks(self, height, width):
        """m for an H x W token map."""
        rows, cols = height // self.ratio, width // self.ratio
        if self.landmark_grid is not None:
            rows, cols = min(rows, self.landmark_grid), min(cols, self.landmark_grid)
        return rows * cols

    def landmarks(self, q, height, width):
        """q [B, h, N, d] -> landmarks [B, h, m, d]."""
        b, h, _, d = q.shape
        grid = q.reshape(b * h, height, width, d).transpose(0, 3, 1, 2)        # [B·h, d, H, W]
        if self.landmark_grid is not None:
            side = self.landmark_grid * self.ratio
            target = (min(height, side), min(width, side))
            if target != (height, width):
                grid = ops.adaptive_avg_pool2d(grid, target)
        pooled = self.landmark(grid)                                             # [B·h, d, H/r, W/r]
        marks = pooled.reshape(b, h, d, pooled.shape[2] * pooled.shape[3]).swapaxes(-1, -2)  # [B, h, m, d]
        return self.landmark_act(self.landmark_norm(marks))

    def construct(self, q, v, height, width):
        marks = self.landmarks(q, height, width)
        k1 = self.gaussian(q, marks)                                             # [B, h, N, m]
        k2 = self.gaussian(marks, marks)                                         # [B, h, m, m]
        k2_inv = self.inverse(k2)
        if self.norm_inverse:
            d_inv_sqrt = ops.div(1.0, ops.sqrt(k2.sum(axis=-1, keepdims=True)))  # [B, h, m, 1]
            k2_inv = d_inv_sqrt * k2_inv * d_inv_sqrt.reshape(d_inv_sqrt.shape[:-2] + (1, -1))
        context = _bmm_a_t(k1, v)                                                # [B, h, m, d]
        return _bmm(_bmm(k1, k2_inv), context)


class SoftAttention(nn.Cell):
    """SOFT attention on tokens x [B, N, D] of an H x W map -> [B, N, D].

    k = q (no separate key), q scaled by d^(-1/4), landmark kernel attention, plus a depth-wise
    (per-head) k x k convolution of v as a local term, then the output projection.
    """

    def __init__(self, dim, num_heads, ratio, local_kernel, newton_iters=20, norm_inverse=False,
                 landmark_grid=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_scale = 1.0 / math.sqrt(math.sqrt(self.head_dim))
        self.q = nn.Dense(dim, dim, weight_init=TruncatedNormal(0.02))
        self.v = nn.Dense(dim, dim, weight_init=TruncatedNormal(0.02))
        self.kernel = SoftKernelAttention(self.head_dim, ratio, newton_iters, norm_inverse, landmark_grid)
        self.local_conv = nn.Conv2d(num_heads, num_heads, local_kernel, pad_mode="pad", padding=local_kernel // 2,
                                    group=num_heads, has_bias=False)
        self.proj = nn.Dense(dim, dim, weight_init=TruncatedNormal(0.02))

    def split_heads(self, x):
        """[B, N, D] -> [B, h, N, d]."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def local_term(self, v, height, width):
        """The per-head k x k convolution of v [B, N, D] (channel c in head c // d): v viewed as
        [B·d, h, H, W] through ``local_conv`` (groups = h), back to [B, N, D]."""
        b, n, dim = v.shape
        grid = v.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 3, 2, 1)      # [B, d, h, N]
        out = self.local_conv(grid.reshape(b * self.head_dim, self.num_heads, height, width))
        return out.reshape(b, self.head_dim, self.num_heads, n).transpose(0, 3, 2, 1).reshape(b, n, dim)

    def construct(self, x, height, width):
        v = self.v(x)
        q = self.split_heads(self.q(x)) * self.q_scale
        global_term = self.kernel(q, self.split_heads(v), height, width)          # [B, h, N, d]
        b, _, n, _ = global_term.shape
        out = global_term.transpose(0, 2, 1, 3).reshape(b, n, -1) + self.local_term(v, height, width)
        return self.proj(out)


class SoftBlock(nn.Cell):
    """Post-norm SOFT block on x [B, N, D] -> [B, N, D]:
    y = LN1(x + Drop(Attn(x))); out = LN2(y + Drop(FFN(y))), FFN = Dense(D, 4D) -> tanh-GELU -> Dense(4D, D).

    ``drop`` is element-wise dropout at the block's drop-path rate, as in the reference.
    ``attention="softmax"`` swaps in standard softmax attention (the quadratic-cost control of the
    scaling benchmark); everything else is unchanged.
    """

    def __init__(self, dim, num_heads, ratio, local_kernel, drop=0.0, newton_iters=20, norm_inverse=False,
                 landmark_grid=None, attention="soft"):
        super().__init__()
        if attention == "soft":
            self.attn = SoftAttention(dim, num_heads, ratio, local_kernel, newton_iters, norm_inverse, landmark_grid)
        elif attention == "softmax":
            self.attn = Attention(dim, num_heads)
        else:
            raise ValueError(f"attention must be 'soft' or 'softmax', got {attention!r}")
        self.drop1 = nn.Dropout(p=drop) if drop > 0 else nn.Identity()
        self.norm1 = nn.LayerNorm((dim,), epsilon=1e-5)
        init = TruncatedNormal(0.02)
        self.fc1 = nn.Dense(dim, 4 * dim, weight_init=init)
        self.act = nn.GELU(approximate=True)
        self.fc2 = nn.Dense(4 * dim, dim, weight_init=init)
        self.drop2 = nn.Dropout(p=drop) if drop > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm((dim,), epsilon=1e-5)

    def construct(self, x, height, width):
        x = self.norm1(x + self.drop1(self.attn(x, height, width)))
        return self.norm2(x + self.drop2(self.fc2(self.act(self.fc1(x)))))


class Block(nn.Cell):
    """Pre-norm softmax transformer block (stage 4) on [B, N, D], LayerNorm eps 1e-6."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm((dim,), epsilon=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm((dim,), epsilon=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def construct(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
