"""Import PyTorch checkpoints of the original SOFT / SwiftFormer code into MindSpore.

PyTorch files are read without PyTorch (``src/torch_pth.py``). The mapping is explicit: each model family
module provides ``torch_param_names(net)`` giving, for
every one of our parameters, the PyTorch state-dict name it is filled from. Every source entry is
either used or reported, every target parameter is either filled or reported, and shapes must match.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from models import create_model, model_family
from models.checkpoint import CheckpointMismatchError

#: state-dict entries that carry no weights (BatchNorm's step counter) and are dropped on purpose
_COUNTER_SUFFIX = ".num_batches_tracked"
#: the keys under which training scripts nest the weights, in order of preference
_NESTED_KEYS = ("state_dict", "model", "model_ema")


def load_torch_state_dict(path):
    """Read ``path`` (``.pth`` / ``.pt`` / ``.pth.tar``, or ``.npz``) into ``{torch_name: ndarray}``.

    ``.pth`` files are read without PyTorch (``src.torch_pth``: torch's zip and legacy formats; nothing the
    file names is executed). Checkpoints that nest the weights under ``state_dict``, ``model`` or
    ``model_ema`` are unwrapped, and a ``module.`` prefix left by DistributedDataParallel is removed; entries
    that are not tensors (epoch, training arguments) are left out.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Source checkpoint not found: {path}")
    if path.endswith(".npz"):
        with np.load(path) as data:
            state = {k: data[k] for k in data.files}
    else:
        from src.torch_pth import read_pth
        state, _ = read_pth(path)
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors)")
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, np.ndarray):
            continue
        arrays[name[len("module."):] if name.startswith("module.") else name] = value
    if not arrays:
        raise ValueError(f"{path} holds no tensors: nothing to convert")
    return arrays


@dataclass
class ConversionReport:
    """What a conversion did: the overrides it inferred and what it could not match."""
    arch: str
    overrides: dict = field(default_factory=dict)
    unused_source: list = field(default_factory=list)
    unfilled_target: list = field(default_factory=list)
    dropped_counters: int = 0

    @property
    def complete(self):
        return not self.unused_source and not self.unfilled_target

    def summary(self):
        lines = [f"arch: {self.arch}"]
        if self.overrides:
            lines.append(f"inferred from the checkpoint: {self.overrides}")
        if self.dropped_counters:
            lines.append(f"dropped {self.dropped_counters} BatchNorm num_batches_tracked counters")
        if self.unused_source:
            lines.append(f"{len(self.unused_source)} source entries not used: {', '.join(self.unused_source)}")
        if self.unfilled_target:
            lines.append(f"{len(self.unfilled_target)} parameters not filled (left at their initial values): "
                         f"{', '.join(self.unfilled_target)}")
        return "\n".join(lines)


def convert_state_dict(arch, state, num_classes=None, **overrides):
    """Build ``arch`` to fit ``state`` and fill it.

    Args:
        arch: registered model name.
        state: ``{torch_name: ndarray}`` as returned by ``load_torch_state_dict``.
        num_classes: head size; inferred from the checkpoint's head when None.
        **overrides: extra constructor arguments (they win over inferred ones).

    Returns:
        ``(net, report)``: the filled network and a ``ConversionReport``.

    Raises:
        CheckpointMismatchError: a source entry and its target parameter differ in shape.
    """
    import mindspore as ms

    family = model_family(arch)
    inferred = dict(family.variant_overrides_from_torch(state, arch))
    if num_classes is None:
        num_classes = inferred.pop("num_classes", 1000)
    else:
        inferred.pop("num_classes", None)
    inferred.update(overrides)
    net = create_model(arch, num_classes=num_classes, **inferred)

    source_of = family.torch_param_names(net)
    params = dict(net.parameters_and_names())
    report = ConversionReport(arch=arch, overrides=inferred)
    report.dropped_counters = sum(1 for k in state if k.endswith(_COUNTER_SUFFIX))
    used, misshaped = set(), []
    for name, param in params.items():
        src = source_of[name]
        if src not in state:
            report.unfilled_target.append(name)
            continue
        value = np.asarray(state[src], dtype=np.float32)
        if tuple(value.shape) != tuple(param.shape):
            misshaped.append(f"{name} <- {src}: checkpoint {tuple(value.shape)}, model {tuple(param.shape)}")
            continue
        param.set_data(ms.Tensor(value))
        used.add(src)
    if misshaped:
        raise CheckpointMismatchError(f"Shapes differ between the checkpoint and {arch}: " + "; ".join(misshaped))
    report.unused_source = sorted(k for k in state if k not in used and not k.endswith(_COUNTER_SUFFIX))
    return net, report


def convert_file(arch, src, dst, num_classes=None, allow_partial=False, **overrides):
    """Convert the PyTorch checkpoint ``src`` into the MindSpore checkpoint ``dst`` for model ``arch``.

    Fails (CheckpointMismatchError) when entries are unused or parameters unfilled, unless
    ``allow_partial``; returns the ``ConversionReport``.
    """
    import mindspore as ms

    state = load_torch_state_dict(src)
    net, report = convert_state_dict(arch, state, num_classes=num_classes, **overrides)
    if not report.complete and not allow_partial:
        raise CheckpointMismatchError(
            f"{src} does not map completely onto {arch}:\n{report.summary()}\n"
            "Check --arch, or pass --allow-partial to write the checkpoint anyway.")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    ms.save_checkpoint(net, dst, crc_check=True)
    return report
