"""Reading checkpoints into networks: the one strict loader, the metadata, and PyTorch name helpers.

A checkpoint written by train.py holds, besides the network's parameters,
* training state whose names start with one of ``TRAINING_STATE_PREFIXES`` (optimizer moments and step,
  the learning-rate table, loss scale, EMA copies ``ema.<name>``, counters of the train step);
* metadata entries ``META_KEYS`` (epoch, step, best accuracy, class names as JSON, backbone name, and the
  evaluation settings of that accuracy as JSON: ``eval_config``, see ``src/checkpoint_settings.py``).

``read_checkpoint(path)`` splits a file into those three parts; ``load_weights(net, path)`` loads the
network part strictly (every parameter must be filled, nothing unexpected, shapes equal) and raises
``CheckpointMismatchError`` with one readable sentence otherwise. ``load_pretrained(net, path)`` is the
fine-tuning form (``pretrained`` of train.py and ``models.create_model``): a classifier that does not fit
is left at its fresh initialisation, one line naming it; everything else is as strict.
"""
import json
import os

__all__ = ["CheckpointMismatchError", "META_KEYS", "TRAINING_STATE_PREFIXES", "EMA_PREFIX", "CLASSIFIER_PREFIXES",
           "CheckpointContents", "load_checkpoint_entries", "read_checkpoint", "read_checkpoint_meta",
           "mismatch_report", "load_weights", "load_pretrained", "load_checkpoint_strict", "norm_layer_torch_names"]

#: metadata entries of our checkpoints (not parameters of any cell)
META_KEYS = ("epoch_num", "step_num", "best_acc", "class_names", "backbone", "eval_config")
#: metadata entries stored as JSON text
_JSON_META = ("class_names", "eval_config")
EMA_PREFIX = "ema."
#: parameters of the classification heads (SOFT: head; SwiftFormer: head and the distillation head dist_head)
CLASSIFIER_PREFIXES = ("head.", "dist_head.")
#: names of training state (optimizer, schedule, loss scale, EMA, train-step counters), never network weights
TRAINING_STATE_PREFIXES = ("adam_m.", "adam_v.", "moments.", "moment1.", "moment2.", "accum.", EMA_PREFIX,
                           "global_step", "learning_rate", "momentum", "beta1_power", "beta2_power", "scale_sense",
                           "loss_scale", "train_state.", "current_iterator_step", "last_overflow_iterator_step")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameters do not fit the network."""


class CheckpointContents:
    """A checkpoint split into ``weights`` (network parameters), ``ema`` (EMA copies by network name),
    ``state`` (other training state) and ``meta`` (plain Python values; ``class_names`` as a list)."""

    def __init__(self, weights, ema, state, meta):
        self.weights, self.ema, self.state, self.meta = weights, ema, state, meta


def _meta_value(key, value):
    if isinstance(value, str):
        return json.loads(value) if key in _JSON_META else value
    return value.asnumpy().item()


def load_checkpoint_entries(path):
    """Every entry of the MindSpore checkpoint ``path`` ({name: Parameter or str}); FileNotFoundError /
    ValueError (one sentence) for a missing or unreadable file."""
    import mindspore as ms

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    try:
        return ms.load_checkpoint(path)
    except (RuntimeError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read checkpoint {path}: {first}") from None


def read_checkpoint(path):
    """Load ``path`` and split it (see ``CheckpointContents``); FileNotFoundError / ValueError for a missing
    or unreadable file."""
    entries = load_checkpoint_entries(path)
    weights, ema, state, meta = {}, {}, {}, {}
    for name, value in entries.items():
        if name in META_KEYS:
            meta[name] = _meta_value(name, value)
        elif name.startswith(EMA_PREFIX):
            ema[name[len(EMA_PREFIX):]] = value
        elif name.startswith(TRAINING_STATE_PREFIXES):
            state[name] = value
        else:
            weights[name] = value
    return CheckpointContents(weights, ema, state, meta)


def read_checkpoint_meta(path):
    """Only the META_KEYS of a checkpoint ({} for a plain weights file)."""
    import mindspore as ms

    entries = ms.load_checkpoint(path, choice_func=lambda name: name in META_KEYS)
    return {k: _meta_value(k, v) for k, v in entries.items()}


def mismatch_report(expected, found):
    """``expected`` and ``found``: {name: shape}. Returns '' when they fit, else one readable sentence part
    naming missing, unexpected and mis-shaped entries (the first 20 of each)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(f"{k} (checkpoint {tuple(found[k])}, model {tuple(expected[k])})"
                       for k in set(expected) & set(found) if tuple(found[k]) != tuple(expected[k]))
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


def _shape(value):
    return tuple(value.shape)


def load_checkpoint_strict(net, weights, what="The checkpoint", backbone=None, model_name=None):
    """Load ``weights`` ({name: Parameter/Tensor/ndarray}) into ``net``; every parameter must fit.

    ``backbone`` (the name stored in the checkpoint) and ``model_name`` (the model built) turn a mismatch
    between two different backbones into one sentence naming both. Raises CheckpointMismatchError.
    """
    import mindspore as ms

    params = {p.name: p for p in net.get_parameters()}
    report = mismatch_report({k: _shape(p) for k, p in params.items()}, {k: _shape(v) for k, v in weights.items()})
    if report:
        if backbone and model_name and backbone != model_name:
            raise CheckpointMismatchError(
                f"{what} holds a {backbone} network but the model is {model_name}: "
                f"set backbone to {backbone} (or give a {model_name} checkpoint).")
        raise CheckpointMismatchError(f"{what} does not fit {model_name or type(net).__name__}: {report}.")
    values = {k: v if isinstance(v, ms.Parameter) else ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()}
    not_loaded, _ = ms.load_param_into_net(net, values, strict_load=True)
    if not_loaded:
        raise CheckpointMismatchError(f"{what} could not fill: {', '.join(not_loaded)}.")
    return net


def load_weights(net, path, use_ema=False, model_name=None):
    """Load the network weights of checkpoint ``path`` into ``net`` strictly; returns its metadata dict.

    Training state is skipped; with ``use_ema`` and EMA copies in the file those are loaded instead.
    """
    contents = read_checkpoint(path)
    weights = contents.ema if use_ema and contents.ema else contents.weights
    load_checkpoint_strict(net, weights, what=f"The checkpoint {path}", backbone=contents.meta.get("backbone"),
                           model_name=model_name)
    return contents.meta


def _evaluated_weights(contents):
    """The weights whose accuracy the checkpoint reports: the EMA copies when its training evaluated those."""
    evaluated_ema = (contents.meta.get("eval_config") or {}).get("model_ema", False)
    return contents.ema if evaluated_ema and contents.ema else contents.weights


def load_pretrained(net, path, model_name=None, log=None):
    """Initialise ``net`` from checkpoint ``path`` to fine-tune it (timm / mindcv style); returns the metadata.

    Loads the weights the checkpoint's accuracy came from (its EMA weights when its training evaluated
    those). A classifier (``CLASSIFIER_PREFIXES``) that does not fit, another number of classes or a head the
    model has and the checkpoint lacks (or the other way round), keeps the model's fresh initialisation and
    ``log`` (default: the ``models`` logger's warning) gets one line naming it (a headless model, e.g.
    ``features_only``, drops the checkpoint's classifier silently). Any other difference is a
    ``CheckpointMismatchError`` as in ``load_checkpoint_strict`` (another backbone: one sentence naming both).
    """
    import logging

    contents = read_checkpoint(path)
    weights = _evaluated_weights(contents)
    params = {p.name: p for p in net.get_parameters()}
    refit = sorted(k for k in set(weights) | set(params) if k.startswith(CLASSIFIER_PREFIXES)
                   and (k not in weights or k not in params or _shape(weights[k]) != _shape(params[k])))
    kept = {k: v for k, v in weights.items() if k not in refit}
    kept.update({k: params[k].asnumpy() for k in refit if k in params})  # the model's own initial values
    load_checkpoint_strict(net, kept, what=f"The checkpoint {path}", backbone=contents.meta.get("backbone"),
                           model_name=model_name)
    headless = not any(k.startswith(CLASSIFIER_PREFIXES) for k in params)  # features_only, num_classes=0
    if refit and not headless:
        layers = sorted({k.rsplit(".", 1)[0] for k in refit})
        details = "; ".join(_refit_reason(layer, weights, params) for layer in layers)
        (log or logging.getLogger("models").warning)(f"pretrained {path}: {details}; everything else loaded")
    return contents.meta


def _refit_reason(layer, weights, params):
    """One classifier layer's part of the fine-tuning line."""
    ours = {k: v for k, v in params.items() if k.startswith(layer + ".")}
    theirs = {k: v for k, v in weights.items() if k.startswith(layer + ".")}
    if not ours:
        return f"{layer} not used (the model has none)"
    if not theirs:
        return f"{layer} initialised afresh (not in the checkpoint)"
    rows = _shape(ours.get(layer + ".weight", next(iter(ours.values()))))[0]
    old_rows = _shape(theirs.get(layer + ".weight", next(iter(theirs.values()))))[0]
    return f"{layer} re-initialised for {rows} classes (the checkpoint's has {old_rows})"


def norm_layer_torch_names(net):
    """Map the parameters of ``net`` to PyTorch names by layer type, keeping the module path.

    BatchNorm: gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var;
    LayerNorm: gamma/beta -> weight/bias; every other parameter keeps its name. Families whose module
    paths equal the reference's use this as their converter map directly.
    """
    from mindspore import nn

    renames = {}
    for prefix, cell in net.cells_and_names():
        if isinstance(cell, (nn.BatchNorm1d, nn.BatchNorm2d)):
            table = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                     "moving_variance": "running_var"}
        elif isinstance(cell, nn.LayerNorm):
            table = {"gamma": "weight", "beta": "bias"}
        else:
            continue
        for ours, theirs in table.items():
            renames[f"{prefix}.{ours}"] = f"{prefix}.{theirs}"
    return {name: renames.get(name, name) for name, _ in net.parameters_and_names()}
