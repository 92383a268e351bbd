"""Sums as matmuls against ones: on CPU several times faster than MindSpore's ReduceSum / BiasAddGrad for the
shapes of these models (and their gradients are matmuls too, where ReduceSum's is a broadcast)."""
from mindspore import ops

__all__ = ["sum_last_axis", "sum_rows", "sum_channels", "sum_pixels"]


def sum_last_axis(x):
    """Σ over the last axis, kept: [..., n, d] -> [..., n, 1]."""
    d = x.shape[-1]
    return ops.matmul(x.reshape(-1, d), ops.ones((d, 1), x.dtype)).reshape(x.shape[:-1] + (1,))


def sum_rows(x):
    """Σ over the rows of a matrix: [R, C] -> [1, C]."""
    return ops.matmul(ops.ones((1, x.shape[0]), x.dtype), x)


def sum_channels(x):
    """Σ over the channels of a map: [B, C, H, W] -> [B, 1, H, W]."""
    b, c, h, w = x.shape
    return ops.matmul(ops.ones((1, c), x.dtype), x.reshape(b, c, h * w)).reshape(b, 1, h, w)


def sum_pixels(x):
    """Σ over the pixels of a map: [B, C, H, W] -> [B, C, 1, 1]."""
    b, c, h, w = x.shape
    return ops.matmul(x.reshape(b * c, h * w), ops.ones((h * w, 1), x.dtype)).reshape(b, c, 1, 1)
