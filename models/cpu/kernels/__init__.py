"""The C++ CPU kernels of the speed layer (MindSpore "aot" ``Custom`` operators) and their loader.

Sources: ``soft_cpu.cc`` (SOFT: Newton inverses, the per-head local convolution, tanh GELU, the layer-norm
backward), ``swiftformer_train_cpu.cc`` (exact GELU, 3x3 depthwise convolution and layer-scaled residual, each
with its gradient) and ``swiftformer_cpu.cc`` (the fused inference path), with the helpers they share in
``kernel_common.h``. ``make kernels`` (``python models/cpu/kernels/build.py``) compiles them once into
``models/cpu/kernels/build/``; nothing here ever starts a compiler, it only opens libraries built before.

Only ``models.cpu.accelerate`` loads them (so only on CPU: see ``models.cpu_switch``). A library that is not
built leaves its rewrites out (the network keeps MindSpore's standard operators there) and the ``models``
logger says so once.

    >>> kernels = load()                 # a Kernels: .soft, .training, .inference (each None when not built)
    >>> y = kernels.inference.bias_gelu(x, bias)
"""
import logging
import os
from collections import namedtuple

from .build import HERE, library_path

__all__ = ["SOFT_SOURCE", "TRAINING_SOURCE", "INFERENCE_SOURCE", "Kernels", "SoftKernels", "TrainingKernels",
           "InferenceKernels", "load", "load_library"]

SOFT_SOURCE = os.path.join(HERE, "soft_cpu.cc")
TRAINING_SOURCE = os.path.join(HERE, "swiftformer_train_cpu.cc")
INFERENCE_SOURCE = os.path.join(HERE, "swiftformer_cpu.cc")

_LOGGER = logging.getLogger("models")
#: library path -> its kernel object, or None when it is not built (its warning was then logged)
_STATE = {}

#: the three libraries' operators (each None when its library is not built)
Kernels = namedtuple("Kernels", ["soft", "training", "inference"])


def _custom_op(path, name, shapes=None, dtypes=None):
    """The aot Custom operator ``name`` of the library at ``path`` (default: output shape and dtype of input 0)."""
    from mindspore import ops
    return ops.Custom(f"{path}:{name}", shapes or _same_shape, dtypes or _same_dtype, func_type="aot")


def _same_shape(*shapes):
    return shapes[0]


def _same_dtype(*dtypes):
    return dtypes[0]


def _weight_shape(dy, x, w):
    return w


def _layer_norm_grad_shapes(x, dy, gamma, settings):
    return x, gamma, gamma


def _three_like_first(x, *others):
    return x, x, x


def _residual_grad_shapes(dy, z, scale):
    return dy, scale


def _two_like_first(x, *others):
    return x, x


def _key_query_norm_shapes(kq, bias, wg):
    return kq, [kq[0], 1, kq[2]]


class SoftKernels:
    """``soft_cpu.cc`` (float32; no MindSpore gradients, the calling cells define them):

    * ``newton_inverse(mat, settings)``: SOFT's Newton pseudo-inverse of every [m, m] matrix of mat [..., m, m];
      settings = float32 [1] tensor (iterations);
    * ``newton_inverse_norm(mat, settings)``: SOFT-Norm's, settings = float32 [2] (iterations, max halvings);
    * ``local_conv(x, weight)``: per-head k x k convolution ('same' zero padding) of a channels-last token map
      x [B, H, W, D] with weight [h, 1, k, k] -> [B, H, W, D]; ``local_conv_filter_grad(dy, x, weight)``: its
      weight gradient [h, 1, k, k];
    * ``layer_norm_grad(x, dy, gamma, settings)``: the backward of a last-axis layer normalisation of x [R, D]
      -> (dx [R, D], dgamma [D], dbeta [D]); settings = float32 [1] (epsilon);
    * ``tanh_gelu(x)`` / ``tanh_gelu_grad(x, dy)``: the tanh-approximate GELU of any shape and its input gradient.
    """

    def __init__(self, path):
        self.path = path
        self.newton_inverse = _custom_op(path, "SoftNewtonInverse")
        self.newton_inverse_norm = _custom_op(path, "SoftNewtonInverseNorm")
        self.local_conv = _custom_op(path, "SoftLocalConv")
        self.local_conv_filter_grad = _custom_op(path, "SoftLocalConvFilterGrad", _weight_shape)
        self.layer_norm_grad = _custom_op(path, "SoftLayerNormGrad", _layer_norm_grad_shapes,
                                          _three_like_first)
        self.tanh_gelu = _custom_op(path, "SoftTanhGelu")
        self.tanh_gelu_grad = _custom_op(path, "SoftTanhGeluGrad")


class TrainingKernels:
    """``swiftformer_train_cpu.cc`` (float32; each forward has its gradient):

    * ``gelu(x)`` / ``gelu_grad(x, dy)``: exact GELU and dy * GELU'(x), any shape;
    * ``scale_residual(x, z, scale)``: x + scale[c] * z for x, z [B, C, ...], scale [C, 1, 1];
      ``scale_residual_grad(dy, z, scale)`` -> (dz, dscale) (the gradient of x is dy);
    * ``depthwise3x3(x, w)``: 3x3 depthwise convolution, stride 1, zero padding 1, no bias, x [B, C, H, W],
      w [C, 1, 3, 3] (with w rotated by 180 degrees: its input gradient);
      ``depthwise3x3_filter_grad(dy, x, w)`` -> dw [C, 1, 3, 3].
    """

    def __init__(self, path):
        self.path = path
        self.gelu = _custom_op(path, "SwiftTrainGelu")
        self.gelu_grad = _custom_op(path, "SwiftTrainGeluGrad")
        self.scale_residual = _custom_op(path, "SwiftTrainScaleResidual")
        self.scale_residual_grad = _custom_op(path, "SwiftTrainScaleResidualGrad", _residual_grad_shapes,
                                              _two_like_first)
        self.depthwise3x3 = _custom_op(path, "SwiftTrainDepthwise3x3")
        self.depthwise3x3_filter_grad = _custom_op(path, "SwiftTrainDepthwise3x3FilterGrad", _weight_shape)


class InferenceKernels:
    """``swiftformer_cpu.cc``, the fused inference path (float32, channels-first [B, C, ...]; no gradients):

    * ``bias_gelu(x, bias)``: exact GELU(x + bias[c]); ``bias_relu(x, bias)``: max(x + bias[c], 0);
    * ``depthwise3x3(x, w)``: 3x3 depthwise convolution, stride 1, zero padding 1, no bias; w [C, 1, 3, 3];
    * ``scale_residual(x, z, scale, bias)``: x + scale[c] * (z + bias[c]); scale [C, 1, 1];
    * ``key_query_norm(kq, bias, wg)``: kq [B, 2C, N] = [k; q] before their bias -> ([k; q] + bias with
      every token scaled to unit L2 norm per half, a [B, 1, N] = (wg . q_n) / |q_n|).
    """

    def __init__(self, path):
        self.path = path
        self.bias_gelu = _custom_op(path, "SwiftBiasGelu")
        self.bias_relu = _custom_op(path, "SwiftBiasRelu")
        self.depthwise3x3 = _custom_op(path, "SwiftDepthwise3x3")
        self.scale_residual = _custom_op(path, "SwiftScaleResidual")
        self.key_query_norm = _custom_op(path, "SwiftKeyQueryNorm", _key_query_norm_shapes,
                                         _two_like_first)


def load_library(source, kernel_class):
    """``kernel_class(path)`` for the library built from ``source``, or None when it is not built (then the
    ``models`` logger warns once). Cached per library path, so every caller gets the same object."""
    path = library_path(source)
    if path not in _STATE:
        if os.path.isfile(path):
            _STATE[path] = kernel_class(path)
        else:
            _STATE[path] = None
            _LOGGER.warning("CPU kernels of %s not built (run `make kernels`): its rewrites are left out and the "
                            "network uses MindSpore's standard operators there (slower). SOFT_CPU_KERNELS=0 "
                            "switches the whole CPU layer off.", os.path.basename(source))
    return _STATE[path]


def load():
    """The operators of the three libraries (each None when not built)."""
    return Kernels(load_library(SOFT_SOURCE, SoftKernels), load_library(TRAINING_SOURCE, TrainingKernels),
                   load_library(INFERENCE_SOURCE, InferenceKernels))
