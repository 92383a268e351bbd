"""Cells shared by the model families (as timm's and mindcv's ``layers`` packages).

* ``BiasAdd``: bias addition (rows or NCHW maps) with a faster float32 bias gradient.
* ``Dense`` / ``Conv2d``: ``nn.Dense`` / ``nn.Conv2d`` whose bias goes through ``BiasAdd``.
* ``DropPath``: stochastic depth per sample.
* ``LayerNorm``: last-axis layer normalisation with a faster hand-written backward, float32 inside.
* ``TanhGELU`` / ``ErfFreeGELU``: the tanh-approximate GELU written out, and exact GELU without an Erf
  operator (for ONNX export).
* ``KernelActivation``: an element-wise CPU kernel with its gradient kernel as the backward.
* ``Mlp``: Dense -> exact GELU -> Dense.
* ``Attention``: multi-head softmax attention with separate q and kv projections.
* ``HeadwiseConv``: per-head k x k convolution with a faster backward.

``layers.reduce`` holds the sums written as matmuls against ones that these cells and the models share.
"""
from .activations import ErfFreeGELU, KernelActivation, TanhGELU
from .attention import Attention
from .bias import BiasAdd
from .conv import Conv2d, HeadwiseConv
from .dense import Dense
from .drop import DropPath
from .mlp import Mlp
from .norm import LayerNorm

__all__ = ["Attention", "BiasAdd", "Conv2d", "Dense", "DropPath", "ErfFreeGELU", "HeadwiseConv", "KernelActivation", "LayerNorm", "Mlp", "TanhGELU"]
