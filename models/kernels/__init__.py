"""Optional CPU kernels of SwiftFormer and SOFT (MindSpore "aot" Custom operators) and their loader.

The C++ sources are ``swiftformer_cpu.cc`` (``load()``, the fused inference path), ``swiftformer_train_cpu.cc``
(``load_training()``) and ``soft_cpu.cc`` (``soft.load()``), with the helpers they share in ``kernel_common.h``;
``make kernels`` (``python models/kernels/build.py``) compiles them once into ``models/kernels/build/``.
Nothing here ever starts a compiler: ``load_library()``, behind the three loaders, only opens a library that
was built before.

One switch, the environment variable ``SOFT_CPU_KERNELS``:
* ``auto`` (default): use the kernels when the library is built and the device target is CPU;
* ``0``: never use them.
When the switch allows them but the library is not built, the standard MindSpore operators are used and
the ``models`` logger says so once (per library).

    >>> kernels = load()          # None, or an object with the operators below
    >>> y = kernels.bias_gelu(x, bias)
"""
import logging
import os

from . import build
from .build import HERE, SOURCE, library_path

__all__ = ["SWITCH", "CpuKernels", "TrainingKernels", "load", "load_library", "load_training", "switch_allows"]

#: the source of the SwiftFormer training kernels (forward + gradient operators)
TRAINING_SOURCE = os.path.join(HERE, "swiftformer_train_cpu.cc")

#: the environment variable that allows (``auto``) or forbids (``0``) the kernels
SWITCH = "SOFT_CPU_KERNELS"
_LOGGER = logging.getLogger("models")
#: the cache of load_library (one for all loaders): library path -> its kernel object, or None when it is not
#: built (its warning is then logged)
_STATE = {}


def switch_allows():
    """Whether ``SOFT_CPU_KERNELS`` allows the kernels here: ``auto`` and a CPU device target.

    Raises ValueError for a value other than auto / 0.
    """
    value = os.environ.get(SWITCH, "auto").strip().lower() or "auto"
    if value in ("0", "off", "false", "no"):
        return False
    if value != "auto":
        raise ValueError(f"{SWITCH} must be 'auto' or '0', got {value!r}")
    import mindspore as ms
    return ms.get_context("device_target") == "CPU"


def _same_shape(*shapes):
    return shapes[0]


def _same_dtype(*dtypes):
    return dtypes[0]


def _weight_shape(dy, x, w):
    return w


def _custom_op(path, name, shapes=_same_shape, dtypes=_same_dtype):
    """The aot Custom operator ``name`` of the library at ``path`` (default: output shape and dtype of input 0)."""
    from mindspore import ops
    return ops.Custom(f"{path}:{name}", shapes, dtypes, func_type="aot")


def _key_query_norm_shapes(kq, bias, wg):
    return kq, [kq[0], 1, kq[2]]


def _key_query_norm_dtypes(kq, bias, wg):
    return kq, kq


class CpuKernels:
    """The operators of one built library (float32, channels-first [B, C, ...]; no gradients):

    * ``bias_gelu(x, bias)``: exact GELU(x + bias[c]);
    * ``bias_relu(x, bias)``: max(x + bias[c], 0);
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
        self.key_query_norm = _custom_op(path, "SwiftKeyQueryNorm", _key_query_norm_shapes, _key_query_norm_dtypes)


class TrainingKernels:
    """The SwiftFormer training operators of one built library (float32; each forward has its gradient):

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
                                              _residual_grad_dtypes)
        self.depthwise3x3 = _custom_op(path, "SwiftTrainDepthwise3x3")
        self.depthwise3x3_filter_grad = _custom_op(path, "SwiftTrainDepthwise3x3FilterGrad", _weight_shape)


def _residual_grad_shapes(dy, z, scale):
    return dy, scale


def _residual_grad_dtypes(dy, z, scale):
    return dy, dy


def load_library(source, kernel_class, missing_message):
    """``kernel_class(path)`` for the library built from ``source`` (at ``library_path(source)``), or None when
    the switch forbids the kernels or that library is not built; then the ``models`` logger warns once with
    ``missing_message`` followed by "SOFT_CPU_KERNELS=0 silences this.". Cached per library path, so every
    caller gets the same object."""
    if not switch_allows():
        return None
    path = library_path(source)
    if path not in _STATE:
        if os.path.isfile(path):
            _STATE[path] = kernel_class(path)
        else:
            _STATE[path] = None
            _LOGGER.warning("%s %s=0 silences this.", missing_message, SWITCH)
    return _STATE[path]


def load_training():
    """The SwiftFormer training kernels, or None when the switch forbids them or they are not built (logged once)."""
    return load_library(TRAINING_SOURCE, TrainingKernels, "SwiftFormer training kernels not built (run `make "
                        "kernels`); training uses MindSpore's standard operators (slower).")


def load():
    """The kernels, or None when the switch forbids them or the library is not built (logged once)."""
    return load_library(SOURCE, CpuKernels, "CPU kernels not built (run `make kernels`); the fused inference path "
                        "uses MindSpore's standard operators (slower).")
