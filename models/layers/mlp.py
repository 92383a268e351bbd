"""Transformer MLP."""
from mindspore import nn
from mindspore.common.initializer import TruncatedNormal


__all__ = ["Mlp"]


class Mlp(nn.Cell):
    """Dense(D, hidden) -> exact GELU -> Dense(hidden, D) on x [..., D] -> [..., D] (dropout after each)."""

    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Dense(dim, hidden, weight_init=TruncatedNormal(0.02))
        self.act = nn.GELU(approximate=False)
        self.fc2 = nn.Dense(hidden, dim, weight_init=TruncatedNormal(0.02))
        self.drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()

    def construct(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
