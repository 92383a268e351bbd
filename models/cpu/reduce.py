"""Sums as matmuls against ones: on CPU several times faster than MindSpore's ReduceSum / BiasAddGrad for the
shapes of these models (and their gradients are matmuls too, where ReduceSum's is a broadcast). A float32
matmul may run at reduced precision on Ascend's cube unit, one more reason this stays in the CPU layer."""
from mindspore import nn, ops

__all__ = ["sum_last_axis", "sum_rows", "sum_channels", "sum_pixels", "FlatSquaredNorm"]


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


class FlatSquaredNorm(nn.Cell):
    """The squared global norm of a tuple of float32 gradients as one Concat of all of them and one matmul
    [1, n] x [n, 1] (a model has hundreds of gradients, and on CPU the launch of each small Square / ReduceSum
    costs more than its arithmetic). Stands in for ``src.optimizer.SquaredNorm`` (same interface); a NaN or Inf
    anywhere makes the sum non-finite, so ``finite`` needs no second pass (a gradient whose squares overflow
    float32 counts as not finite)."""

    def construct(self, grads):
        return _flat_squared_norm(grads)

    def finite(self, grads):
        return ops.isfinite(_flat_squared_norm(grads))


_as_row = ops.MultitypeFuncGraph("as_row")


@_as_row.register("Tensor")
def _tensor_as_row(tensor):
    return tensor.reshape(-1)


def _flat_squared_norm(tensors):
    flat = ops.concat(ops.HyperMap()(_as_row, tensors))  # a map: graph mode nests a generator's calls
    return ops.matmul(flat.reshape(1, -1), flat.reshape(-1, 1)).reshape(())
