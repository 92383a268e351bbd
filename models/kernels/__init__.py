"""Optional CPU kernels for the fused inference path (MindSpore "aot" Custom operators).

The C++ source is ``swiftformer_cpu.cc``; ``make kernels`` (``python models/kernels/build.py``) compiles it
once into ``models/kernels/build/``. Nothing here ever starts a compiler: ``load()`` only opens a library
that was built before.

One switch, the environment variable ``SOFT_CPU_KERNELS``:
* ``auto`` (default): use the kernels when the library is built and the device target is CPU;
* ``0``: never use them.
When the switch allows them but the library is not built, the standard MindSpore operators are used and
the ``models`` logger says so once.

    >>> kernels = load()          # None, or an object with the operators below
    >>> y = kernels.bias_gelu(x, bias)
"""
import logging
import os

from . import build
from .build import HERE, library_path

__all__ = ["SWITCH", "CpuKernels", "TrainingKernels", "load", "load_training", "switch_allows"]

#: the source of the SwiftFormer training kernels (forward + gradient operators)
TRAINING_SOURCE = os.path.join(HERE, "swiftformer_train_cpu.cc")

#: the environment variable that allows (``auto``) or forbids (``0``) the kernels
SWITCH = "SOFT_CPU_KERNELS"
_LOGGER = logging.getLogger("models")
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
        from mindspore import ops

        def custom(name, shapes=_same_shape, dtypes=_same_dtype):
            return ops.Custom(f"{path}:{name}", shapes, dtypes, func_type="aot")

        self.path = path
        self.bias_gelu = custom("SwiftBiasGelu")
        self.bias_relu = custom("SwiftBiasRelu")
        self.depthwise3x3 = custom("SwiftDepthwise3x3")
        self.scale_residual = custom("SwiftScaleResidual")
        self.key_query_norm = custom("SwiftKeyQueryNorm", _key_query_norm_shapes, _key_query_norm_dtypes)


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
        from mindspore import ops

        def custom(name, shapes=_same_shape, dtypes=_same_dtype):
            return ops.Custom(f"{path}:{name}", shapes, dtypes, func_type="aot")

        self.path = path
        self.gelu = custom("SwiftTrainGelu")
        self.gelu_grad = custom("SwiftTrainGeluGrad")
        self.scale_residual = custom("SwiftTrainScaleResidual")
        self.scale_residual_grad = custom("SwiftTrainScaleResidualGrad", _residual_grad_shapes,
                                          _residual_grad_dtypes)
        self.depthwise3x3 = custom("SwiftTrainDepthwise3x3")
        self.depthwise3x3_filter_grad = custom("SwiftTrainDepthwise3x3FilterGrad", _filter_grad_shape)


def _residual_grad_shapes(dy, z, scale):
    return dy, scale


def _residual_grad_dtypes(dy, z, scale):
    return dy, dy


def _filter_grad_shape(dy, x, w):
    return w


def load_training():
    """The SwiftFormer training kernels, or None when the switch forbids them or they are not built (logged once)."""
    if not switch_allows():
        return None
    path = build.library_path(TRAINING_SOURCE)
    if path not in _STATE:
        if os.path.isfile(path):
            _STATE[path] = TrainingKernels(path)
        else:
            _STATE[path] = None
            _LOGGER.warning("SwiftFormer training kernels not built (run `make kernels`); training uses "
                            "MindSpore's standard operators (slower). %s=0 silences this.", SWITCH)
    return _STATE[path]


def load():
    """The kernels, or None when the switch forbids them or the library is not built (logged once)."""
    if not switch_allows():
        return None
    path = library_path()
    if path not in _STATE:
        if os.path.isfile(path):
            _STATE[path] = CpuKernels(path)
        else:
            _STATE[path] = None
            _LOGGER.warning("CPU kernels not built (run `make kernels`); the fused inference path uses "
                            "MindSpore's standard operators (slower). %s=0 silences this.", SWITCH)
    return _STATE[path]
