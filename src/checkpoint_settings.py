"""Evaluation that equals training's: the settings a checkpoint records about its own accuracy.

train.py writes into every checkpoint (metadata ``eval_config``, see ``models.checkpoint.META_KEYS``) the
settings under which the accuracy of its epoch line (and ``best_acc``) was measured:

* ``model_ema``: whether the exponential moving average of the weights was evaluated (``best.ckpt`` is kept
  by that accuracy);
* the evaluation preprocessing: ``eval_image_size``, ``crop_pct`` and ``eval_interpolation`` (resolved:
  never empty).

eval.py, export.py and infer.py apply them before they build anything (``apply_checkpoint_settings``), so a
checkpoint evaluates to the accuracy its training log printed whatever evaluation config is used:

* a key given on the command line wins, and one line says what the checkpoint recorded instead;
* a value from the config file (or the default) is replaced by the checkpoint's, one line per change.

export.py writes the preprocessing next to the exported file (``<file>.eval_config.json``), where infer.py
``--mindir`` and eval_onnx.py find it (``apply_sidecar_settings``), with the same rules.

The checkpoint of eval / export / infer is ``checkpoint_file_path`` (``ckpt_file``), else ``pretrained``:
the original MindSpore port's ``SOFT_eval.yml`` and ``SOFT_export.yml`` name it so
(``inference_checkpoint``).
"""
import json
import os

__all__ = ["EVAL_KEYS", "PREPROCESS_KEYS", "eval_settings", "inference_checkpoint", "apply_checkpoint_settings",
           "apply_recorded_settings", "eval_config_path", "write_eval_config", "apply_sidecar_settings"]

#: the keys a checkpoint records: which weights were evaluated, and how the images were prepared
EVAL_KEYS = ("model_ema", "eval_image_size", "crop_pct", "eval_interpolation")
#: the preprocessing part (what an exported file needs)
PREPROCESS_KEYS = EVAL_KEYS[1:]


def eval_settings(config, evaluated_ema):
    """The ``eval_config`` a training checkpoint records: ``{key: value}`` of ``EVAL_KEYS``.

    ``evaluated_ema``: whether the training run evaluated EMA weights (it keeps EMA copies).
    """
    from src.dataset import eval_interpolation

    return {"model_ema": bool(evaluated_ema), "eval_image_size": int(config.eval_image_size),
            "crop_pct": float(config.crop_pct), "eval_interpolation": eval_interpolation(config)}


def inference_checkpoint(config):
    """The checkpoint eval / export / infer use: ``checkpoint_file_path``, else ``pretrained`` (the original
    port's key in its eval and export configs), else ''."""
    return str(config.checkpoint_file_path or config.pretrained or "")


def _describe(key, value):
    if key == "model_ema":
        return "the EMA weights" if value else "the raw (non-EMA) weights"
    return f"{key} {value}"


def _text(value):
    return str(value).lower() if isinstance(value, bool) else str(value)


def apply_recorded_settings(config, recorded, source, log=print):
    """Set the ``EVAL_KEYS`` of ``recorded`` ({key: value}) in ``config`` unless given on the command line.

    ``source`` names where they come from (``the checkpoint``). Prints one line per key that changes or that
    the command line keeps against the record; returns the keys taken from ``recorded``.
    """
    from src.dataset import eval_interpolation

    taken = []
    for key in EVAL_KEYS:
        if key not in recorded:
            continue
        wanted = recorded[key]
        current, origin = getattr(config, key), "the config file" if key in config.explicit_keys else "the default"
        if key == "eval_interpolation" and not current:
            current = eval_interpolation(config)
            origin = "the config file's interpolation" if "interpolation" in config.explicit_keys else "the default"
        if key in config.command_line_keys:
            if current != wanted:
                log(f"  {key}: {_text(current)} from the command line ({source} measured its accuracy with "
                    f"{_describe(key, wanted)})")
            continue
        if current != wanted:
            log(f"  {key}: {_text(wanted)} from {source} ({origin} says {_text(current)}; --{key} chooses)")
        setattr(config, key, wanted)
        taken.append(key)
    return taken


def apply_checkpoint_settings(config, log=print):
    """Apply the ``eval_config`` of the inference checkpoint to ``config`` (see the module docstring).

    Returns the checkpoint's metadata ({} when it has none or the file is missing: the builder then reports
    the missing file). Points ``checkpoint_file_path`` at the checkpoint when it came from ``pretrained``.
    """
    from models.checkpoint import read_checkpoint_meta

    path = inference_checkpoint(config)
    if path and not config.checkpoint_file_path:
        log(f"checkpoint: {path} (from pretrained)")
        config.checkpoint_file_path = path
    if not path or not os.path.isfile(path):
        return {}
    try:
        meta = read_checkpoint_meta(path)
    except (RuntimeError, ValueError, OSError):
        return {}  # not a readable checkpoint: the builder says so in one sentence
    recorded = meta.get("eval_config")
    if recorded:
        accuracy = meta.get("best_acc")
        measured = f" (its best accuracy: {accuracy:.6f})" if accuracy is not None and accuracy >= 0 else ""
        log(f"evaluation as in training, recorded in {path}{measured}: "
            + ", ".join(_describe(k, recorded[k]) for k in EVAL_KEYS if k in recorded))
        apply_recorded_settings(config, recorded, "the checkpoint", log)
    return meta


def eval_config_path(model_path):
    """The settings sidecar of an exported file: ``<model_path>.eval_config.json``."""
    return f"{model_path}.eval_config.json"


def write_eval_config(model_path, config):
    """Write the preprocessing of ``config`` (``PREPROCESS_KEYS``, resolved) next to ``model_path``; returns
    the sidecar's path."""
    from src.dataset import eval_interpolation

    values = {"eval_image_size": int(config.eval_image_size), "crop_pct": float(config.crop_pct),
              "eval_interpolation": eval_interpolation(config)}
    path = eval_config_path(model_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(values, fh)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def apply_sidecar_settings(config, model_path, log=print):
    """Apply the preprocessing export.py recorded next to ``model_path`` (if any); returns the keys taken."""
    path = eval_config_path(model_path)
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            recorded = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the evaluation settings in {path}: {err}") from None
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} must hold a JSON mapping of evaluation settings")
    recorded = {k: v for k, v in recorded.items() if k in PREPROCESS_KEYS}
    if recorded:
        log(f"evaluation preprocessing recorded in {path}: "
            + ", ".join(_describe(k, recorded[k]) for k in PREPROCESS_KEYS if k in recorded))
    return apply_recorded_settings(config, recorded, "the export", log)
