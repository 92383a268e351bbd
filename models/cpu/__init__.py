"""The CPU speed layer: a one-time pass that rewrites a built network for speed on CPU.

    >>> from models.cpu import accelerate
    >>> net = accelerate(net)     # in place (returns net); models.create_model does this on CPU

The model files are plain MindSpore (standard operators and autodiff): that is what GPU and Ascend run. On a
CPU device target ``models.create_model`` (and ``models.fuse_for_inference`` for the cells it creates) hands
the network to ``accelerate``, unless the switch ``SOFT_CPU_KERNELS=0`` says otherwise (``models.cpu_switch``,
which imports nothing of this package; GPU and Ascend never import or build it). ``accelerate`` replaces cells
by CPU versions that compute the same values and gradients (tested against the portable cells) faster on CPU:

=======================  ===================================================================================
``layers``               nn.Dense / nn.Conv2d bias gradients as matmuls; nn.LayerNorm's backward; the tanh
                         GELU formula or kernel; exact-GELU and 3x3 depthwise training kernels
``soft``                 the Gaussian kernel's written-out gradient; the Newton inverses and the per-head
                         local convolution as SOFT kernels
``swiftformer``          L2 normalisation with matmul sums and a written-out gradient; the layer-scaled
                         residual kernel; the fused inference kernels
``reduce``               the matmul sums, and ``FlatSquaredNorm`` (the global gradient norm as one Concat
                         and one matmul) that ``src.train_step`` uses for an accelerated network
``kernels``              the C++ sources (``make kernels`` builds them) and their loader
=======================  ===================================================================================

Parameters, their names and the cell paths stay those of the portable network, so checkpoints move freely
between the two. A kernel library that is not built leaves its rewrites out (logged once). The pass marks the
network (``models.cpu_switch.is_accelerated``) and can run again: a second pass rewrites only cells that are
new (those of ``fuse_for_inference``).
"""
import mindspore as ms

from ..cpu_switch import MARK
from . import layers, soft, swiftformer
from .kernels import load as load_kernels
from .layers import Float32Kernel
from .reduce import FlatSquaredNorm

__all__ = ["accelerate", "FlatSquaredNorm", "RULES"]

#: every rewrite rule: (cell, kernels) -> its replacement (or the cell changed in place), or None
RULES = layers.RULES + soft.RULES + swiftformer.RULES


def _rewrite(cell, kernels):
    for rule in RULES:
        replacement = rule(cell, kernels)
        if replacement is not None:
            return replacement
    return cell


def accelerate(net):
    """Rewrite ``net`` for CPU, in place; returns it (or its replacement when ``net`` itself is a cell that a rule
    replaces, e.g. a lone ``nn.GELU``). Only parameter-free cells are replaced by new ones (cells with parameters
    are changed in place), so every parameter keeps its name."""
    kernels = load_kernels()
    standing_in = set()  # the standard operators and cells a Float32Kernel falls back to: never rewritten
    for _, cell in net.cells_and_names():
        if isinstance(cell, Float32Kernel):
            standing_in.update(id(sub) for _, sub in cell.cells_and_names())
    for _, parent in list(net.cells_and_names()):
        if id(parent) in standing_in:
            continue
        for name, child in list(parent.name_cells().items()):
            if id(child) in standing_in:
                continue
            replacement = _rewrite(child, kernels)
            if replacement is not child:
                if isinstance(parent, (ms.nn.SequentialCell, ms.nn.CellList)):
                    parent[int(name)] = replacement
                else:
                    setattr(parent, name, replacement)
    net = _rewrite(net, kernels)
    setattr(net, MARK, True)
    return net
