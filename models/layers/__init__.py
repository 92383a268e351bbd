"""Cells shared by the model families (as timm's and mindcv's ``layers`` packages), in plain MindSpore.

* ``Attention``: multi-head softmax attention with separate q and kv projections.
* ``Mlp``: Dense -> exact GELU -> Dense.
* ``DropPath``: stochastic depth per sample.
* ``ErfFreeGELU``: exact GELU without an Erf operator (for ONNX export).

The CPU speed layer (``models.cpu``) is not here: it rewrites built networks on CPU only.
"""
from .activations import ErfFreeGELU
from .attention import Attention
from .drop import DropPath
from .mlp import Mlp

__all__ = ["Attention", "DropPath", "ErfFreeGELU", "Mlp"]
