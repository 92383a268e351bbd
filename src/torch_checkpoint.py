"""Import checkpoints of the original SOFT / SwiftFormer PyTorch code and of the original MindSpore port.

Two source layouts, told apart by the file (``source_layout``):

* ``torch``: a PyTorch state dict by the original code's names, as ``.pth`` / ``.pt`` / ``.pth.tar`` (read
  without PyTorch by ``src.torch_pth``: torch's zip and legacy formats, nothing the file names is executed) or
  as an ``.npz`` of arrays; each family module maps it with ``torch_param_names(net)``;
* ``port``: a MindSpore ``.ckpt`` of the original MindSpore port (fudan-zvg/SOFT_MindSpore_Ascend, SOFT
  only), by its parameter names; mapped with ``port_param_names(net)``; its training state (optimizer
  moments, step, learning rate) and the cells it builds but never runs (``PORT_UNUSED``) are dropped and
  counted, its missing patch-embedding biases are zeros.

Every source entry is either used or reported, every target parameter is either filled or reported, and
shapes must match.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from models import create_model, model_family
from models.checkpoint import META_KEYS, TRAINING_STATE_PREFIXES, CheckpointMismatchError, load_checkpoint_entries

__all__ = ["SOURCE_LAYOUTS", "source_layout", "load_torch_state_dict", "load_port_checkpoint", "ConversionReport",
           "convert_state_dict", "convert_file"]

#: state-dict entries that carry no weights (BatchNorm's step counter) and are dropped on purpose
_COUNTER_SUFFIX = ".num_batches_tracked"
#: the keys under which training scripts nest the weights, in order of preference
_NESTED_KEYS = ("state_dict", "model", "model_ema")
SOURCE_LAYOUTS = ("torch", "port")


def source_layout(path):
    """``port`` for a MindSpore ``.ckpt`` (the original MindSpore port), ``torch`` for anything else."""
    return "port" if str(path).lower().endswith(".ckpt") else "torch"


def load_torch_state_dict(path):
    """Read ``path`` (``.pth`` / ``.pt`` / ``.pth.tar``, or ``.npz``) into ``{torch_name: ndarray}``.

    Checkpoints that nest the weights under ``state_dict``, ``model`` or ``model_ema`` are unwrapped,
    and a ``module.`` prefix left by DistributedDataParallel is removed; entries that are not tensors
    (epoch, training arguments) are left out.
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


def load_port_checkpoint(path):
    """Read a MindSpore checkpoint of the original port into ``{name: ndarray}`` (everything it holds)."""
    entries = load_checkpoint_entries(path)
    return {name: value.asnumpy() for name, value in entries.items() if hasattr(value, "asnumpy")}


@dataclass
class ConversionReport:
    """What a conversion did: the overrides it inferred, what it dropped or filled and what it could not match."""
    arch: str
    layout: str = "torch"
    overrides: dict = field(default_factory=dict)
    unused_source: list = field(default_factory=list)
    unfilled_target: list = field(default_factory=list)
    dropped_counters: int = 0
    dropped_training_state: int = 0
    dropped_unused_cells: list = field(default_factory=list)
    zero_filled: list = field(default_factory=list)

    @property
    def complete(self):
        return not self.unused_source and not self.unfilled_target

    def summary(self):
        lines = [f"arch: {self.arch} (from {'the original MindSpore port' if self.layout == 'port' else 'PyTorch'})"]
        if self.overrides:
            lines.append(f"inferred from the checkpoint: {self.overrides}")
        if self.dropped_counters:
            lines.append(f"dropped {self.dropped_counters} BatchNorm num_batches_tracked counters")
        if self.dropped_training_state:
            lines.append(f"dropped {self.dropped_training_state} entries of training state (optimizer, step, "
                         "learning rate)")
        if self.dropped_unused_cells:
            lines.append(f"dropped {len(self.dropped_unused_cells)} parameters of cells the port builds but never "
                         f"runs ({_cells(self.dropped_unused_cells)})")
        if self.zero_filled:
            lines.append(f"filled {len(self.zero_filled)} convolution biases the port does not have with zeros: "
                         f"{', '.join(self.zero_filled)}")
        if self.unused_source:
            lines.append(f"{len(self.unused_source)} source entries not used: {', '.join(self.unused_source)}")
        if self.unfilled_target:
            lines.append(f"{len(self.unfilled_target)} parameters not filled (left at their initial values): "
                         f"{', '.join(self.unfilled_target)}")
        return "\n".join(lines)


def _cells(names):
    """The cells (parameter paths without the last part) of ``names``, in order, once each."""
    seen = []
    for name in names:
        cell = name.rsplit(".", 1)[0]
        if cell not in seen:
            seen.append(cell)
    return ", ".join(seen)


def _source_names(family, net, layout):
    """{our parameter: tuple of accepted source names} for ``layout``."""
    if layout == "torch":
        return {ours: (theirs,) for ours, theirs in family.torch_param_names(net).items()}
    return family.port_param_names(net)


def convert_state_dict(arch, state, num_classes=None, layout="torch", **overrides):
    """Build ``arch`` to fit ``state`` and fill it.

    Args:
        arch: registered model name.
        state: ``{source_name: ndarray}`` (``load_torch_state_dict`` / ``load_port_checkpoint``).
        num_classes: head size; inferred from the checkpoint's head when None.
        layout: ``torch`` or ``port`` (see the module docstring).
        **overrides: extra constructor arguments (they win over inferred ones).

    Returns:
        ``(net, report)``: the filled network and a ``ConversionReport``.

    Raises:
        CheckpointMismatchError: a source entry and its target parameter differ in shape.
        ValueError: the layout does not exist for ``arch``.
    """
    import mindspore as ms

    if layout not in SOURCE_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(SOURCE_LAYOUTS)}, got {layout!r}")
    family = model_family(arch)
    report = ConversionReport(arch=arch, layout=layout)
    if layout == "port":
        if not hasattr(family, "port_param_names"):
            raise ValueError(f"the original MindSpore port has SOFT models only; {arch} cannot come from a port "
                             "checkpoint (.ckpt): convert a PyTorch .pth or .npz instead.")
        training = [k for k in state if k.startswith(TRAINING_STATE_PREFIXES) or k in META_KEYS]
        report.dropped_training_state = len([k for k in training if k not in META_KEYS])
        report.dropped_unused_cells = [k for k in state if family.PORT_UNUSED.match(k)]
        state = {k: v for k, v in state.items() if k not in training and k not in report.dropped_unused_cells}
    inferred = dict(family.variant_overrides_from_torch(state, arch))
    if num_classes is None:
        num_classes = inferred.pop("num_classes", 1000)
    else:
        inferred.pop("num_classes", None)
    inferred.update(overrides)
    net = create_model(arch, num_classes=num_classes, **inferred)
    report.overrides = inferred

    sources = _source_names(family, net, layout)
    report.dropped_counters = sum(1 for k in state if k.endswith(_COUNTER_SUFFIX))
    used, misshaped = set(), []
    for name, param in net.parameters_and_names():
        accepted = sources[name]
        if not accepted:
            param.set_data(ms.Tensor(np.zeros(param.shape, np.float32)))
            report.zero_filled.append(name)
            continue
        src = next((s for s in accepted if s in state), None)
        if src is None:
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
    """Convert the checkpoint ``src`` (layout by ``source_layout``) into the MindSpore checkpoint ``dst``.

    Fails (CheckpointMismatchError) when entries are unused or parameters unfilled, unless
    ``allow_partial``; returns the ``ConversionReport``.
    """
    import mindspore as ms

    layout = source_layout(src)
    state = load_port_checkpoint(src) if layout == "port" else load_torch_state_dict(src)
    net, report = convert_state_dict(arch, state, num_classes=num_classes, layout=layout, **overrides)
    if not report.complete and not allow_partial:
        raise CheckpointMismatchError(
            f"{src} does not map completely onto {arch}:\n{report.summary()}\n"
            "Check --arch, or pass --allow-partial to write the checkpoint anyway.")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    ms.save_checkpoint(net, dst, crc_check=True)
    return report
