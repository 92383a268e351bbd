"""Multi-head softmax attention."""
from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal


__all__ = ["Attention"]


class Attention(nn.Cell):
    """Multi-head softmax attention on x [B, N, D] -> [B, N, D] (q and kv projections, scale d^-0.5).

    ``height`` / ``width`` are accepted (and unused) so that it can stand in for SOFT's attention.
    """

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Dense(dim, dim, has_bias=qkv_bias, weight_init=TruncatedNormal(0.02))
        self.kv = nn.Dense(dim, 2 * dim, has_bias=qkv_bias, weight_init=TruncatedNormal(0.02))
        self.attn_drop = nn.Dropout(p=attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = nn.Dense(dim, dim, weight_init=TruncatedNormal(0.02))
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else nn.Identity()

    def construct(self, x, height=0, width=0):
        b, n, dim = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k, v = ops.split(self.kv(x), dim, axis=-1)
        k_t = k.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 3, 1)        # [B, h, d, N]
        v = v.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)          # [B, h, N, d]
        attn = ops.softmax(ops.matmul(q, k_t) * self.scale, axis=-1)
        out = ops.matmul(self.attn_drop(attn), v).transpose(0, 2, 1, 3).reshape(b, n, dim)
        return self.proj_drop(self.proj(out))
