"""The SOFT / SOFT-Norm CPU kernels (``soft_cpu.cc``): Newton inverses, the per-head local convolution and the
tanh-approximate GELU.

Built by ``make kernels`` into ``models/kernels/build/soft_cpu-<hash>.so`` and used under the same switch as
the other kernels (``SOFT_CPU_KERNELS``: ``auto`` uses them when built and the device target is CPU, ``0``
never). Nothing here starts a compiler; without the library the models use MindSpore's standard operators
and the ``models`` logger says so once.

    >>> kernels = load()                     # None, or a SoftKernels
    >>> inv = kernels.newton_inverse(k2, settings)
"""
import os

from . import _custom_op, _same_dtype, _weight_shape, load_library
from .build import HERE

__all__ = ["SOURCE", "SoftKernels", "load"]

#: the source of these kernels (built by ``make kernels`` with the others)
SOURCE = os.path.join(HERE, "soft_cpu.cc")


def _layer_norm_grad_shapes(x, dy, gamma, settings):
    return x, gamma, gamma


def _layer_norm_grad_dtypes(x, dy, gamma, settings):
    return x, x, x


class SoftKernels:
    """The operators of one built library (float32 only; no MindSpore gradients, the calling cells define them):

    * ``newton_inverse(mat, settings)``: SOFT's Newton pseudo-inverse of every [m, m] matrix of mat [..., m, m];
      settings = float32 [1] tensor (iterations);
    * ``newton_inverse_norm(mat, settings)``: SOFT-Norm's, settings = float32 [2] (iterations, max halvings);
    * ``local_conv(x, weight)``: per-head k x k convolution ('same' zero padding) of a channels-last token map
      x [B, H, W, D] with weight [h, 1, k, k] -> [B, H, W, D];
    * ``local_conv_filter_grad(dy, x, weight)``: its weight gradient [h, 1, k, k];
    * ``layer_norm_grad(x, dy, gamma, settings)``: the backward of a last-axis layer normalisation of x [R, D]
      -> (dx [R, D], dgamma [D], dbeta [D]); settings = float32 [1] (epsilon);
    * ``tanh_gelu(x)`` / ``tanh_gelu_grad(x, dy)``: the tanh-approximate GELU of any shape and its input gradient.
    """

    def __init__(self, path):
        self.path = path
        self.newton_inverse = _custom_op(path, "SoftNewtonInverse")
        self.newton_inverse_norm = _custom_op(path, "SoftNewtonInverseNorm")
        self.local_conv = _custom_op(path, "SoftLocalConv")
        self.local_conv_filter_grad = _custom_op(path, "SoftLocalConvFilterGrad", _weight_shape, _same_dtype)
        self.layer_norm_grad = _custom_op(path, "SoftLayerNormGrad", _layer_norm_grad_shapes, _layer_norm_grad_dtypes)
        self.tanh_gelu = _custom_op(path, "SoftTanhGelu")
        self.tanh_gelu_grad = _custom_op(path, "SoftTanhGeluGrad")


def load():
    """The kernels, or None when the switch forbids them or the library is not built (logged once)."""
    return load_library(SOURCE, SoftKernels, "SOFT CPU kernels not built (run `make kernels`); SOFT models use "
                        "MindSpore's standard operators (slower).")
