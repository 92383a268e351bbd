"""Fully connected layer with a faster bias gradient on CPU."""
from mindspore import nn

from .bias import BiasAdd

__all__ = ["Dense"]


class Dense(nn.Dense):
    """``nn.Dense`` (same parameters ``weight`` [out, in] / ``bias`` [out], initialisers, outputs and construct)
    whose bias is added by ``layers.BiasAdd`` (a faster float32 bias gradient on CPU). x [..., in] -> [..., out]."""

    def __init__(self, in_channels, out_channels, weight_init=None, bias_init=None, has_bias=True):
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init, has_bias=has_bias)
        self.bias_add = BiasAdd()
