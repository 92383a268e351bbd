"""The one network builder: train.py, eval.py, export.py, infer.py and the benchmarks build through it.

    >>> net, meta = build_network(config, "eval", checkpoint="best.ckpt")

What ``purpose`` adds to ``models.create_model(config.backbone, num_classes=config.class_num,
**model_options(config))``:

=========  ======================================================================================
train      ``drop_path_rate``; ``pretrained`` weights (``models.load_pretrained``: a classifier of another
           size is re-initialised, one line to ``log``); mixed precision ``amp_level``; training mode
eval       the checkpoint (strict; the EMA weights when ``model_ema``; ``checkpoint_file_path``, else
           ``pretrained`` as the original port's eval configs name it); the one-time inference pass
           ``models.fuse_for_inference``; mixed precision; evaluation mode
infer      as eval
export     the portable network (never the CPU speed layer: the file must run anywhere); the checkpoint; the
           inference pass; float32 (the exporter writes what it is given)
=========  ======================================================================================

``meta`` is the checkpoint's metadata (``models.checkpoint.META_KEYS``; {} without a checkpoint).
"""
import mindspore as ms
from mindspore import nn

from models import create_model, fuse_for_inference, load_pretrained, load_weights, model_family
from src.checkpoint_settings import inference_checkpoint

__all__ = ["PURPOSES", "model_options", "apply_amp", "build_network"]

PURPOSES = ("train", "eval", "infer", "export")


def model_options(config):
    """The backbone's constructor options: ``model_args`` plus the old flat spelling ``newton_iters``."""
    options = dict(config.model_args or {})
    if config.newton_iters:
        options.setdefault("newton_iters", int(config.newton_iters))
    return options


def apply_amp(net, amp_level):
    """Mixed precision ``amp_level`` (O0 / O1 / O2 / O3); layer normalisations and cells with ``keep_fp32 = True``
    (the SOFT landmark attention and Newton inverses) stay float32 at every level."""
    level = str(amp_level or "O0").upper()
    if level not in ("O0", "O1", "O2", "O3"):
        raise ValueError(f"amp_level must be one of O0, O1, O2, O3, got {amp_level!r}.")
    if level == "O0":
        return net
    net = ms.amp.auto_mixed_precision(net, level)
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.LayerNorm) or getattr(cell, "keep_fp32", False):
            cell.to_float(ms.float32)
    return net


def _create(config, portable=False, **extra):
    name = str(config.backbone)
    options = model_options(config)
    options.update(extra)
    try:
        return create_model(name, num_classes=int(config.class_num), portable=portable, **options)
    except TypeError as err:
        family = model_family(name).__name__.rsplit(".", 1)[-1]
        raise ValueError(f"model_args {options} do not fit {name} ({family}): {err}") from None


def build_network(config, purpose="train", checkpoint=None, random_weights=False, log=print):
    """Build ``config.backbone`` for ``purpose`` (see the module docstring); returns ``(net, meta)``.

    ``checkpoint``: the weights for eval / infer / export (default ``inference_checkpoint(config)``);
    ``random_weights``: build those purposes without weights (the benchmarks); ``log``: where the line about
    a re-initialised classifier goes.
    Raises ValueError (bad options), FileNotFoundError / CheckpointMismatchError (bad checkpoint).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    name = str(config.backbone)
    meta = {}
    if purpose == "train":
        net = _create(config, **({"drop_path_rate": float(config.drop_path_rate)} if config.drop_path_rate else {}))
        if config.pretrained:
            meta = load_pretrained(net, str(config.pretrained), model_name=name, log=log)
        net = apply_amp(net, config.amp_level)
        net.set_train(True)
        return net, meta
    path = str(checkpoint or inference_checkpoint(config))
    if not path and not random_weights:
        raise ValueError("Set --checkpoint_file_path (or --ckpt_file, or the original port's --pretrained) to the "
                         "checkpoint to use.")
    net = _create(config, portable=purpose == "export")
    if path:
        meta = load_weights(net, path, use_ema=bool(config.model_ema), model_name=name)
    fuse_for_inference(net)
    if purpose != "export":
        net = apply_amp(net, config.amp_level)
    net.set_train(False)
    return net, meta
