"""Model surgery for export: make a built network exportable to MINDIR / ONNX / AIR.

    >>> from models import create_model
    >>> from models.export_utils import prepare_for_export
    >>> net = prepare_for_export(create_model("soft_tiny", pretrained="soft_tiny.ckpt", portable=True), "ONNX")
    >>> mindspore.export(net, Tensor(np.zeros((1, 3, 224, 224), np.float32)), file_name="soft_tiny",
    ...                  file_format="ONNX")

The model files are written with operators every exporter handles (no Reciprocal, Rsqrt or resize
operators, static shapes apart from the batch axis), so little is left to do here. ``prepare_for_export``
changes the network in place (and returns it); its numbers stay those of the original network (float32
rounding aside, < 1e-6 relative):

* every format: evaluation mode; the network must be the portable one (``create_model(..., portable=True)``,
  what export.py builds): a network rewritten by the CPU speed layer (``models.cpu``) holds ``Custom``
  operators backed by a library built on this machine, and is refused;
* ONNX: exact-GELU cells -> ``ErfFreeGELU`` (MindSpore's ONNX exporter has no Erf); ``ops.Conv2D``
  primitives built with an int kernel size get a (k, k) attribute; a convolution with asymmetric padding
  is refused (MindSpore writes 4-tuple ONNX pads in the wrong order).
"""
import json
import os

from mindspore import nn

from .cpu_switch import is_accelerated
from .layers import ErfFreeGELU

__all__ = ["EXPORT_FORMATS", "ErfFreeGELU", "prepare_for_export", "unsupported_onnx_cells",
           "class_names_path", "read_class_names", "write_class_names"]

EXPORT_FORMATS = ("MINDIR", "ONNX", "AIR")

def _replace_children(net, predicate, factory):
    """Replace every descendant cell ``c`` with ``predicate(c)`` by ``factory(c)``; returns the count."""
    count = 0
    for _, cell in list(net.cells_and_names()):
        for name, child in list(cell.name_cells().items()):
            if predicate(child):
                setattr(cell, name, factory(child))
                count += 1
    return count


def _conv_kernel_attrs_as_tuples(net):
    """``ops.Conv2D(c, k)`` keeps ``kernel_size`` as an int attribute, which MindSpore's ONNX exporter
    cannot write ("Cast value from type Int64Imm to ValueTuple failed"); make it (k, k) as nn.Conv2d does."""
    count = 0
    for _, cell in net.cells_and_names():
        for prim in list(getattr(cell, "_primitives", {}).values()):
            if prim is None or getattr(prim, "name", "") not in ("Conv2D", "Conv2d"):
                continue
            kernel = prim.attrs.get("kernel_size")
            if isinstance(kernel, int):
                prim.add_prim_attr("kernel_size", (kernel, kernel))
                count += 1
    return count


def _is_exact_gelu(cell):
    """nn.GELU(approximate=False): MindSpore stores approximate as 'none' (exact) or 'tanh'."""
    if not isinstance(cell, nn.GELU):
        return False
    mode = getattr(cell, "approximate", "tanh")
    return mode is False or str(mode).lower() in ("none", "false")


def _asymmetric_padding(cell):
    if not isinstance(cell, (nn.Conv2d,)):
        return False
    pad = getattr(cell, "padding", 0)
    if isinstance(pad, (tuple, list)) and len(pad) == 4:
        return pad[0] != pad[1] or pad[2] != pad[3]
    return False


def unsupported_onnx_cells(net):
    """Names of the cells that ``prepare_for_export(net, "ONNX")`` cannot make ONNX-exportable."""
    return [name for name, cell in net.cells_and_names() if _asymmetric_padding(cell)]


def prepare_for_export(net, fmt="MINDIR"):
    """Make ``net`` (a built, weight-loaded network) exportable to ``fmt`` ("MINDIR", "ONNX" or "AIR",
    case-insensitive); changes it in place and returns it.

    Raises ValueError for an unknown format, a network rewritten by the CPU speed layer, or (ONNX) a convolution
    with asymmetric padding.
    """
    fmt = str(fmt).upper()
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if is_accelerated(net):
        raise ValueError("this network was rewritten by the CPU speed layer (its Custom operators need a library "
                         "built on this machine): build it with create_model(..., portable=True) to export it")
    net.set_train(False)
    if fmt == "ONNX":
        bad = unsupported_onnx_cells(net)
        if bad:
            raise ValueError("ONNX export cannot express the asymmetric padding of " + ", ".join(bad[:5]) +
                             " (MindSpore writes 4-tuple pads in the wrong order); export MINDIR instead")
        _replace_children(net, _is_exact_gelu, lambda cell: ErfFreeGELU())
        _conv_kernel_attrs_as_tuples(net)
    return net


# --------------------------------------------------------------------------------------------------
# Class-name sidecars: ``<model file>.classes.json`` next to a checkpoint / MINDIR / ONNX file holds the
# JSON list of class names (label i is names[i]); infer.py reads it, export.py copies it along.

def class_names_path(model_path):
    """The sidecar of ``model_path``: ``<model_path>.classes.json``."""
    return f"{model_path}.classes.json"


def read_class_names(model_path):
    """The class names stored next to ``model_path``, or None when there is no sidecar.

    Raises ValueError when the sidecar is not a JSON list of strings.
    """
    path = class_names_path(model_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            names = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the class names in {path}: {err}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must hold a JSON list of class names")
    return names


def write_class_names(model_path, names):
    """Write ``names`` (a sequence of str) to the sidecar of ``model_path`` (atomically); returns its path."""
    path = class_names_path(model_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump([str(n) for n in names], fh, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path
