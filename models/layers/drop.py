"""Stochastic depth."""
from mindspore import nn, ops

__all__ = ["DropPath"]


class DropPath(nn.Cell):
    """Zero a whole sample's residual branch with probability ``rate`` while training.

    x [B, ...] -> [B, ...]; kept samples are scaled by 1 / (1 - rate) (``ops.dropout``), as timm's DropPath.
    """

    def __init__(self, rate=0.0):
        super().__init__()
        self.rate = float(rate)

    def construct(self, x):
        if not self.training or self.rate == 0.0:
            return x
        mask = ops.dropout(ops.ones((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype), p=self.rate)
        return x * mask
