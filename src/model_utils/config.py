"""Configuration: one schema of documented keys, YAML files under ``config/``, ``--key value`` overrides.

    >>> from src.model_utils.config import load_config
    >>> config = load_config(["--config_path", "config/soft_tiny.yml", "--batch_size", "64"])
    >>> config.batch_size
    64

Order of precedence: the defaults in ``SCHEMA`` < the YAML file (``--config_path``, default
``config/SOFT_config.yml``) < command-line ``--key value`` (or ``--key=value``) pairs.

Every key has a type, a default and a help text in ``SCHEMA`` (``python train.py --help`` prints
them). An unknown or misspelt key, in a YAML file or on the command line, raises ``ConfigError``
naming the closest valid key; a value of the wrong type names the key and the expected type; a key
set twice in one YAML mapping names the key and both lines; an empty YAML file is refused.
Booleans accept true/false/1/0 (and yes/no/on/off); the original MindSpore port wrote them as 0/1.

Path values expand environment variables (``$DATA_PATH/imagenet``, ``~``). A variable that is not set is
kept as written and reported when the key is used: one ``ConfigError`` sentence naming the variable and the
key (``config.raw(key)`` gives the unexpanded text without that check).

``run_distribute`` is ``auto`` (default), true or false: ``auto`` trains data-parallel exactly when the
process was started by a launcher (msrun, mpirun, a rank table; see ``src.trainer.resolve_distributed``).

Derived values: an empty ``eval_path`` means ``<dataset_path>/val`` (the sibling ``val`` folder when
``dataset_path`` ends in ``train``, the original port's style); the training images are read
from ``config.train_path`` = ``<dataset_path>/train`` (``src/dataset.py`` also accepts the original
port's layout, where ``dataset_path`` is the training folder itself).
"""
import copy
import difflib
import os
import re
import sys
from collections import OrderedDict

import yaml

__all__ = ["ConfigError", "Config", "Key", "SCHEMA", "KEY_ALIASES", "IGNORED_KEYS", "DEFAULT_CONFIG",
           "load_config", "make_config", "format_help", "unset_variables"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join("config", "SOFT_config.yml")

class ConfigError(ValueError):
    """A configuration mistake: unknown key, wrong type or a value out of range."""


class Key:
    """One configuration key: ``kind`` is str, path, int, float, bool, auto_bool ("auto" or a bool) or dict."""

    __slots__ = ("name", "kind", "default", "help", "choices", "value_aliases", "check", "group")

    def __init__(self, name, kind, default, help, choices=None, value_aliases=None, check=None, group=""):
        self.name = name
        self.kind = kind
        self.default = default
        self.help = help
        self.choices = choices
        self.value_aliases = value_aliases or {}
        self.check = check
        self.group = group


def _positive(v):
    return None if v > 0 else "must be > 0"


def _multiple_of_32(v):
    return None if v > 0 and v % 32 == 0 else "must be a positive multiple of 32 (e.g. 224)"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _probability(v):
    return None if 0.0 <= v <= 1.0 else "must be between 0 and 1"


def _open_unit(v):
    return None if 0.0 < v <= 1.0 else "must be in (0, 1]"


def _smoothing(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def _beta(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def _randaugment(v):
    if not v:
        return None
    from src.autoaugment import parse_rand_augment  # pure Python, no MindSpore import
    try:
        parse_rand_augment(v)
    except ValueError as err:
        return str(err)
    return None


# (group, [Key, ...]) -- the ONE table of configuration keys.
_GROUPS = [
    ("ModelArts / cloud", [
        Key("enable_modelarts", "bool", False,
            "run as a ModelArts job: data_url is copied to data_path, checkpoint_url to load_path, "
            "and output_path is copied back to train_url"),
        Key("data_url", "str", "", "OBS URL of the dataset (ModelArts)"),
        Key("train_url", "str", "", "OBS URL that receives output_path at the end of a ModelArts job"),
        Key("checkpoint_url", "str", "", "OBS URL of a checkpoint to fetch into load_path (ModelArts)"),
        Key("output_path", "path", "",
            "local folder for logs and (with a relative save_checkpoint_path) checkpoints; empty: the current "
            "folder; on ModelArts the folder copied back to train_url"),
        Key("data_path", "path", "/cache/data", "local folder that data_url is copied into (ModelArts)"),
        Key("load_path", "path", "/cache/checkpoint_path",
            "local folder that checkpoint_url is copied into (ModelArts)"),
    ]),
    ("Training data", [
        Key("dataset_path", "path", "",
            "dataset root holding train/<class>/* and val/<class>/* (ImageFolder); the original port's "
            "style, dataset_path pointing at the training folder itself, is also accepted. Path keys expand "
            "environment variables: the shipped configs say $DATA_PATH/imagenet (export DATA_PATH; unset, it is "
            "an error naming it)"),
        Key("train_image_size", "int", 224, "training crop size in pixels (a multiple of 32)",
            check=_multiple_of_32),
        Key("interpolation", "str", "bilinear",
            "resize interpolation of the random resized crop: bilinear, bicubic, nearest, area, or random "
            "(a random choice of bilinear and bicubic per image)",
            choices=("bilinear", "bicubic", "nearest", "area", "random")),
        Key("crop_min", "float", 0.08, "smallest area fraction of the random resized crop (scale=(crop_min, 1))",
            check=_open_unit),
        Key("batch_size", "int", 128, "training batch size per device", check=_positive),
        Key("train_num_workers", "int", 8,
            "parallel workers of each training pipeline stage, capped at this process's share of the CPU cores "
            "(its pinned cores, or the server's cores divided by the processes on the server)", check=_positive),
        Key("dataset_fraction", "float", 1.0,
            "fraction of every class to use, train and eval (1.0 = all; a fixed per-class subset, for quick runs)",
            check=_open_unit),
        Key("verify_images", "bool", True,
            "check every image with PIL once and skip corrupt ones with a warning; the verdicts are cached in "
            "a manifest (see data_cache_path) that later runs reuse, rechecking only changed files. Off: no "
            "check ahead; files are checked as they are read (a little more CPU per image)"),
        Key("data_cache_path", "path", "",
            "folder for the image manifests (and PNG copies of images MindSpore cannot decode); empty: "
            "beside each data folder (.<folder>.imagecache) when writable, else <output_path>/data_cache"),
    ]),
    ("Evaluation data", [
        Key("eval_path", "path", "", "evaluation ImageFolder (empty: <dataset_path>/val)"),
        Key("eval_image_size", "int", 224, "evaluation crop size in pixels (a multiple of 32)",
            check=_multiple_of_32),
        Key("eval_batch_size", "int", 128, "evaluation batch size per device", check=_positive),
        Key("eval_interval", "int", 1,
            "evaluate every this many epochs during training (the last epoch always); 0: no evaluation",
            check=_non_negative),
        Key("eval_offset", "int", -1,
            "evaluate at the epochs where epoch % eval_interval == eval_offset (-1: max_epoch % eval_interval, "
            "so the last epoch is always evaluated)"),
        Key("eval_num_workers", "int", 8,
            "parallel workers of each evaluation pipeline stage, capped as train_num_workers", check=_positive),
        Key("crop_pct", "float", 0.875,
            "evaluation centre-crop fraction: resize the short side to int(eval_image_size / crop_pct), "
            "then centre-crop eval_image_size", check=_open_unit),
        Key("eval_interpolation", "str", "",
            "interpolation of the evaluation resize: bilinear, bicubic (PIL-style), nearest, area; "
            "empty: the same as interpolation (bicubic when interpolation is random)",
            choices=("", "bilinear", "bicubic", "nearest", "area")),
    ]),
    ("Network", [
        Key("backbone", "str", "soft_tiny", "model name, one of models.list_models() (listed below)"),
        Key("class_num", "int", 1000, "number of classes; must equal the number of class folders",
            check=_positive),
        Key("pretrained", "path", "",
            "MindSpore checkpoint to initialise the network from before training (empty: random "
            "initialisation); a classifier of another size is re-initialised (fine-tuning). eval.py, export.py "
            "and infer.py take it as their checkpoint when checkpoint_file_path is empty (the original port's "
            "eval and export configs)"),
        Key("drop_path_rate", "float", 0.0, "stochastic depth rate, ramped linearly over the blocks",
            check=_probability),
        Key("model_args", "dict", {},
            "constructor options of the backbone, passed to models.create_model: e.g. {newton_iters: 20, "
            "landmarks: pool} for SOFT, {distillation: false} for SwiftFormer (YAML mapping; on the command "
            "line JSON or key=value,key=value)"),
        Key("newton_iters", "int", 0,
            "old flat spelling of model_args: {newton_iters: N} (SOFT backbones); 0: not set", check=_non_negative),
    ]),
    ("Learning rate", [
        Key("lr_decay_mode", "str", "cosine",
            "learning-rate schedule after the warmup: cosine, exponential, step or constant"),
        Key("lr_init", "float", 0.0, "learning rate at the start of the warmup", check=_non_negative),
        Key("lr_max", "float", 1e-3, "peak learning rate, reached at the end of the warmup (for the total batch "
            "batch_size x devices)", check=_non_negative),
        Key("lr_min", "float", 1e-5, "final learning rate of the decay", check=_non_negative),
        Key("max_epoch", "int", 300, "number of training epochs", check=_positive),
        Key("warmup_epochs", "int", 5, "epochs of linear warmup from lr_init to lr_max", check=_non_negative),
    ]),
    ("Optimizer", [
        Key("opt", "str", "adamw", "optimizer: adamw, or sgd (SGD with momentum)"),
        Key("beta1", "float", 0.9, "Adam/AdamW beta1", check=_beta),
        Key("beta2", "float", 0.999, "Adam/AdamW beta2", check=_beta),
        Key("eps", "float", 1e-8, "Adam/AdamW epsilon", check=_positive),
        Key("momentum", "float", 0.9, "momentum of SGD/Momentum optimizers", check=_non_negative),
        Key("weight_decay", "float", 0.05, "weight decay (decoupled for AdamW)", check=_non_negative),
        Key("no_weight_decay_filter", "str", "beta,bias",
            "comma-separated fragments of parameter names trained without weight decay, in addition to "
            "1-D parameters (norm weights, biases), names ending in .bias and the model's no_weight_decay() "
            "names (SOFT: cls_token; the pos_embed tables are decayed)"),
        Key("gc_flag", "bool", False, "gradient centralisation"),
        Key("clip_grad", "float", 0.0, "clip gradients to this global L2 norm (0: off)", check=_non_negative),
        Key("loss_scale", "float", 1024.0,
            "loss scale for mixed precision (1: none); with loss_scale_type dynamic, the initial scale",
            check=_positive),
        Key("loss_scale_type", "str", "fixed",
            "fixed: always loss_scale; dynamic: halve the scale and skip the step when the gradients overflow "
            "(never below 1), double it after scale_window good steps in a row", choices=("fixed", "dynamic")),
        Key("scale_window", "int", 2000, "good steps in a row before a dynamic loss scale doubles", check=_positive),
    ]),
    ("Loss and augmentation", [
        Key("loss_name", "str", "ce_smooth_mixup",
            "loss function; training labels are soft targets [B, class_num] (one-hot, smoothed, mixed)"),
        Key("use_label_smooth", "bool", True, "smooth the one-hot training targets by label_smooth_factor"),
        Key("label_smooth_factor", "float", 0.1, "label smoothing amount", check=_smoothing),
        Key("mixup", "float", 0.0, "MixUp alpha (0: off)", check=_non_negative),
        Key("cutmix", "float", 0.0, "CutMix alpha (0: off)", check=_non_negative),
        Key("mixup_prob", "float", 1.0, "probability of applying MixUp/CutMix to a batch", check=_probability),
        Key("mixup_switch_prob", "float", 0.5,
            "probability of CutMix instead of MixUp when both are on", check=_probability),
        Key("autoaugment", "bool", False, "AutoAugment with the ImageNet policy"),
        Key("randaugment", "str", "",
            "RandAugment in timm notation, e.g. rand-m9-mstd0.5-inc1 (empty: off); exclusive with autoaugment",
            check=_randaugment),
        Key("color_jitter", "float", 0.0,
            "brightness/contrast/saturation jitter, applied only when neither autoaugment nor randaugment is on",
            check=_non_negative),
        Key("reprob", "float", 0.0, "random erasing probability (per-pixel random values)", check=_probability),
        Key("hflip", "float", 0.5, "horizontal flip probability", check=_probability),
        Key("distillation_type", "str", "none",
            "DeiT distillation of the distillation head (SwiftFormer): none (both heads learn the labels), "
            "hard (the teacher's arg-max class) or soft (KL divergence at distillation_tau)",
            choices=("none", "soft", "hard")),
        Key("distillation_alpha", "float", 0.5,
            "weight of the distillation loss: (1 - alpha) * CE(head) + alpha * distillation loss(dist_head)",
            check=_probability),
        Key("distillation_tau", "float", 1.0, "temperature of soft distillation", check=_positive),
        Key("teacher_model", "str", "",
            "teacher of distillation: a registered model name, or a mindcv model name when mindcv is installed"),
        Key("teacher_path", "path", "", "MindSpore checkpoint of the teacher's weights (loaded strictly)"),
    ]),
    ("Checkpoints", [
        Key("save_checkpoint", "bool", True, "save checkpoints during training"),
        Key("save_checkpoint_epochs", "int", 1, "save a checkpoint every this many epochs", check=_positive),
        Key("keep_checkpoint_max", "int", 5, "keep the newest this many checkpoints (plus the best one)",
            check=_positive),
        Key("save_checkpoint_path", "path", "./outputs",
            "folder for checkpoints; a relative path is taken inside output_path"),
        Key("resume", "path", "",
            "checkpoint to resume training from (network, optimizer state, epoch), or 'auto' for the newest "
            "checkpoint in the checkpoint folder; empty: a fresh start"),
        Key("save_all_ranks", "bool", False,
            "in data-parallel training every rank saves its own checkpoints into <checkpoint folder>/rank<R> "
            "(to compare the replicas); otherwise rank 0 alone saves"),
        Key("checkpoint_file_path", "path", "",
            "checkpoint to evaluate (eval.py), export (export.py) or predict with (infer.py); empty: pretrained. "
            "A training checkpoint brings the weights (EMA or not) and the evaluation preprocessing its accuracy "
            "was measured with; those keys given on the command line win"),
        Key("model_ema", "bool", False,
            "keep an exponential moving average of the weights (training; evaluated and kept as best.ckpt by its "
            "accuracy); eval / export / infer: use a checkpoint's EMA weights (default: as the checkpoint records)"),
        Key("model_ema_decay", "float", 0.99996, "decay of the weight moving average", check=_probability),
    ]),
    ("Runtime", [
        Key("context_mode", "str", "graph",
            "MindSpore execution mode: graph or pynative (the original port's 0 / 1 also work)",
            choices=("graph", "pynative"),
            value_aliases={"0": "graph", "1": "pynative", "graph_mode": "graph", "pynative_mode": "pynative"}),
        Key("device_target", "str", "CPU", "device: CPU, GPU or Ascend", choices=("CPU", "GPU", "Ascend")),
        Key("device_id", "int", 0, "device index for single-device runs", check=_non_negative),
        Key("device_num", "int", 1,
            "number of devices (the original port's --device_num; distributed runs read it from the "
            "communication group)", check=_positive),
        Key("run_distribute", "auto_bool", "auto",
            "data-parallel training over all processes of the job: auto (default) follows how the process was "
            "started (msrun, mpirun or a rank table: data parallel; a plain python train.py: one device); "
            "true requires such a launcher (one sentence otherwise); false trains alone even under a launcher"),
        Key("amp_level", "str", "O0", "mixed precision level: O0 (float32), O1, O2 or O3",
            choices=("O0", "O1", "O2", "O3")),
        Key("dataset_sink_mode", "bool", True,
            "feed batches through MindSpore's device-side data queue (GPU / Ascend; CPU always feeds one batch "
            "per step, as MindSpore does there)"),
        Key("sink_size", "int", -1,
            "steps per sink with dataset_sink_mode: -1 = one sink per epoch; otherwise a divisor of the steps "
            "of an epoch"),
        Key("log_interval", "int", 50,
            "steps between intermediate training log lines, the only points besides the epoch end where the "
            "host reads the loss (0: once per epoch)",
            check=_non_negative),
        Key("open_profiler", "bool", False, "collect a MindSpore profile of the run"),
        Key("seed", "int", 1, "random seed (weights, data shuffle and augmentation)", check=_non_negative),
    ]),
    ("Export", [
        Key("export_format", "str", "MINDIR",
            "export.py output format (the model zoo's file_format): MINDIR, ONNX or AIR (Ascend only)",
            choices=("MINDIR", "ONNX", "AIR")),
        Key("file_name", "str", "",
            "export.py output file name without extension (empty: the backbone name; a relative name goes "
            "into output_path when set)"),
        Key("export_batch_size", "int", 1,
            "export.py: batch dimension of the exported input, -1 for a dynamic batch (MINDIR only); when not "
            "set, export.py takes batch_size from its config or command line (the model zoo's spelling), else 1"),
        Key("onnx_path", "path", "", "eval_onnx.py: the ONNX file to evaluate (written by export.py)"),
    ]),
]

SCHEMA = OrderedDict()
for _group, _keys in _GROUPS:
    for _key in _keys:
        _key.group = _group
        SCHEMA[_key.name] = _key
del _group, _keys, _key

# Old spellings that map onto a schema key.
KEY_ALIASES = {"file_format": "export_format", "ckpt_file": "checkpoint_file_path"}

# Keys of the original port's configs that are accepted and ignored (with the reason shown in --help).
IGNORED_KEYS = {
    "soft_config_path": "the original port's path of a second SOFT config; every option is a key here",
}

_TYPE_WORDS = {"auto_bool": "auto or a boolean (true/false/1/0)", "str": "a string", "path": "a path (string)",
               "int": "an integer", "float": "a number",
               "bool": "a boolean (true/false/1/0)", "dict": "a mapping (YAML, JSON or key=value,key=value)"}
_TRUE = {"true", "1", "yes", "on", "y", "t"}
_FALSE = {"false", "0", "no", "off", "n", "f"}


_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def unset_variables(text):
    """Names of the environment variables that ``text`` still names after ``os.path.expandvars`` (not set)."""
    return [a or b for a, b in _VARIABLE.findall(str(text))]


def _closest_key(name):
    candidates = list(SCHEMA) + list(KEY_ALIASES)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.0)
    if not close:
        return None
    best = close[0]
    return KEY_ALIASES.get(best, best)


def _unknown_key(name, where):
    close = _closest_key(name)
    hint = f"; did you mean {close!r}?" if close else ""
    return ConfigError(f"unknown config key {name!r}{hint} ({where}; `--help` lists every key)")


def _canonical_name(name, where):
    name = str(name).strip()
    if name in SCHEMA:
        return name
    if name in KEY_ALIASES:
        return KEY_ALIASES[name]
    dashed = name.replace("-", "_")
    if dashed in SCHEMA:
        return dashed
    if dashed in KEY_ALIASES:
        return KEY_ALIASES[dashed]
    raise _unknown_key(name, where)


def _as_bool(value):
    """True / False for the boolean spellings (true/false, 1/0, yes/no, on/off), None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _coerce(key, value, where):
    """Convert ``value`` (from YAML or a CLI string) to the key's type, or raise ConfigError."""
    kind = key.kind

    def bad(extra=""):
        return ConfigError(f"config key {key.name!r} expects {_TYPE_WORDS[kind]}, got {value!r}{extra} ({where})")

    if kind in ("str", "path"):
        if value is None:
            result = ""
        elif isinstance(value, bool):
            raise bad()
        elif isinstance(value, (str, int, float)):
            result = str(value)
        else:
            raise bad()
        if kind == "path" and result:
            result = os.path.expanduser(os.path.expandvars(result))
    elif kind in ("bool", "auto_bool"):
        if kind == "auto_bool" and isinstance(value, str) and value.strip().lower() == "auto":
            result = "auto"
        else:
            result = _as_bool(value)
            if result is None:
                raise bad()
    elif kind == "int":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            result = value
        elif isinstance(value, float) and value.is_integer():
            result = int(value)
        elif isinstance(value, str):
            try:
                result = int(value.strip())
            except ValueError:
                try:
                    as_float = float(value.strip())
                except ValueError:
                    raise bad() from None
                if not as_float.is_integer():
                    raise bad() from None
                result = int(as_float)
        else:
            raise bad()
    elif kind == "dict":
        result = _parse_mapping(value, bad)
    elif kind == "float":
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value.strip())
            except ValueError:
                raise bad() from None
        else:
            raise bad()
    else:  # pragma: no cover - schema error
        raise AssertionError(kind)

    if key.choices is not None:
        if isinstance(value, bool):
            raise bad()
        text = str(result).strip()
        lowered = text.lower()
        if lowered in key.value_aliases:
            result = key.value_aliases[lowered]
        else:
            match = [c for c in key.choices if c.lower() == lowered]
            if not match:
                shown = ", ".join(repr(c) for c in key.choices)
                raise ConfigError(f"config key {key.name!r} must be one of {shown}, got {value!r} ({where})")
            result = match[0]
    if key.check is not None:
        problem = key.check(result)
        if problem:
            raise ConfigError(f"config key {key.name!r} {problem}, got {value!r} ({where})")
    return result


def _parse_mapping(value, bad):
    """A dict from YAML (already a mapping), JSON text or 'key=value,key=value' (values read as YAML)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if not isinstance(value, str):
        raise bad()
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = yaml.load(text, Loader=_StrictLoader)
        except _RepeatedKey as err:
            raise bad(f" (sets {err.key!r} twice)") from None
        except yaml.YAMLError:
            raise bad() from None
        if not isinstance(parsed, dict):
            raise bad()
        return {str(k): v for k, v in parsed.items()}
    result = {}
    for item in _split_top_level(text):
        name, eq, raw = item.partition("=")
        if not eq or not name.strip():
            raise bad(" (expected key=value,key=value)")
        if name.strip() in result:
            raise bad(f" (sets {name.strip()!r} twice)")
        try:
            result[name.strip()] = yaml.safe_load(raw.strip()) if raw.strip() else ""
        except yaml.YAMLError:
            raise bad(f" (cannot read the value of {name.strip()!r})") from None
    return result


def _split_top_level(text):
    """'a=1,b=[1,2]' -> ['a=1', 'b=[1,2]']: commas inside brackets do not split."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _registered_models():
    from models import list_models  # the registry is the one list of backbones
    return list_models(include_benchmark=True)


def _check_backbone(name, where):
    valid = _registered_models()
    if name in valid:
        return
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown backbone {name!r} ({where}).{hint} Valid backbones: {', '.join(valid)}.")


class Config:
    """Validated configuration values with attribute access.

    Known keys are type-checked on assignment too. Other attributes may be attached at run time
    (``config.steps_per_epoch = 10``); they are not part of ``to_dict()``. ``explicit_keys``: the keys the
    YAML file, the command line or code set; ``command_line_keys``: those given on the command line (they
    win over what a checkpoint records, see ``src.checkpoint_settings``).
    """

    def __init__(self, values=None, config_path=None, explicit=(), command_line=()):
        object.__setattr__(self, "_values", _defaults())
        object.__setattr__(self, "_extra", {})
        object.__setattr__(self, "config_path", config_path)
        object.__setattr__(self, "explicit_keys", set(explicit))
        object.__setattr__(self, "command_line_keys", set(command_line))
        for name, value in (values or {}).items():
            self._values[name] = value

    # ---- access -------------------------------------------------------------------------------
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        values = object.__getattribute__(self, "_values")
        if name in values:
            return self._resolved(name)
        if name in KEY_ALIASES:
            return self._resolved(KEY_ALIASES[name])
        extra = object.__getattribute__(self, "_extra")
        if name in extra:
            return extra[name]
        close = _closest_key(name)
        hint = f"; did you mean {close!r}?" if close else ""
        raise AttributeError(f"unknown config key {name!r}{hint}")

    def __setattr__(self, name, value):
        if name in ("config_path", "explicit_keys", "command_line_keys"):
            object.__setattr__(self, name, value)
            return
        if name in SCHEMA or name in KEY_ALIASES:
            name = KEY_ALIASES.get(name, name)
            value = _coerce(SCHEMA[name], value, "set in code")
            if name == "backbone":
                _check_backbone(value, "set in code")
            self._values[name] = value
            self.explicit_keys.add(name)
        else:
            self._extra[name] = value

    def __contains__(self, name):
        return name in self._values or name in KEY_ALIASES or name in self._extra

    def get(self, name, default=None):
        try:
            return getattr(self, name)
        except AttributeError:
            return default

    def _resolved(self, name, check=True):
        value = self._values[name]
        if name == "eval_path" and not value and self._values["dataset_path"]:
            root = self._checked("dataset_path") if check else self._values["dataset_path"]
            if os.path.basename(os.path.normpath(root)) == "train":  # the original port's style
                return os.path.join(os.path.dirname(os.path.normpath(root)), "val")
            return os.path.join(root, "val")
        return self._checked(name) if check else value

    def _checked(self, name):
        """The value of ``name``; a path naming an environment variable that is not set is a ConfigError."""
        value = self._values[name]
        if SCHEMA[name].kind == "path" and value and not os.path.exists(value):
            unset = unset_variables(value)
            if unset:
                where = f" (in {self.config_path})" if self.config_path and name not in self.command_line_keys else ""
                raise ConfigError(
                    f"config key {name!r} is {value!r}{where} but the environment variable {unset[0]} is not set: "
                    f"export {unset[0]}=<folder> so that {value} names your data, or give --{name} on the "
                    "command line.")
        return value

    def raw(self, name):
        """The value of key ``name`` as given (path variables not checked, derived values not filled in)."""
        return self._values[KEY_ALIASES.get(name, name)]

    @property
    def train_path(self):
        """The training ImageFolder: ``<dataset_path>/train`` (empty when dataset_path is empty)."""
        root = self._checked("dataset_path")
        return os.path.join(root, "train") if root else ""

    def to_dict(self):
        """Every schema key with its value (derived values filled in, unset path variables left as written);
        reloadable as a YAML file."""
        return OrderedDict((k, self._resolved(k, check=False)) for k in self._values)

    def copy(self, **overrides):
        """A copy with some keys replaced (validated)."""
        new = Config(self._values, self.config_path, self.explicit_keys, self.command_line_keys)
        new._extra.update(self._extra)
        for k, v in overrides.items():
            setattr(new, k, v)
        return new

    def dump(self, path):
        """Write ``to_dict()`` to a YAML file."""
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(dict(self.to_dict()), fh, sort_keys=False)

    def __repr__(self):
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"Config({body})"

    def __str__(self):
        return "\n".join(f"{k}: {v!r}" for k, v in self.to_dict().items())


def format_help():
    """The ``--help`` text: every key with its type, default and help, by group."""
    lines = ["usage: python train.py|eval.py|export.py [--config_path FILE] [--KEY VALUE ...]", "",
             f"  --config_path FILE  YAML file with values for the keys below (default: {DEFAULT_CONFIG})",
             "  -h, --help          show this message and exit"]
    current = None
    for key in SCHEMA.values():
        if key.group != current:
            current = key.group
            lines.append(f"\n{current}:")
        kind = key.kind if key.choices is None else "{" + "|".join(c for c in key.choices if c) + "}"
        kind = "{auto|true|false}" if key.kind == "auto_bool" else kind
        lines.append(f"  --{key.name} ({kind}, default: {key.default!r})")
        lines.append(f"        {key.help}")
    lines.append("")
    lines.append("Backbones (models.list_models()): " + ", ".join(_registered_models()))
    if KEY_ALIASES:
        lines.append("Other spellings accepted: " + ", ".join(f"{a} -> {k}" for a, k in KEY_ALIASES.items()))
    for name, reason in IGNORED_KEYS.items():
        lines.append(f"Accepted and ignored: {name} ({reason})")
    return "\n".join(lines)


def _resolve_config_path(path):
    if os.path.isfile(path):
        return path
    if not os.path.isabs(path):
        candidate = os.path.join(REPO_ROOT, path)
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"config file not found: {path}")


class _RepeatedKey(yaml.YAMLError):
    def __init__(self, key, first_line, line):
        super().__init__(key)
        self.key, self.first_line, self.line = key, first_line, line


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps the last value silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _RepeatedKey(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path):
    try:
        with open(path, "r", encoding="utf-8") as fh:
            docs = list(yaml.load_all(fh, Loader=_StrictLoader))
    except _RepeatedKey as err:
        raise ConfigError(f"config file {path} sets {err.key!r} twice (lines {err.first_line} and {err.line}); "
                          "keep one of them") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse config file {path}: {err}") from None
    # The original port allowed extra YAML documents (help texts, choices) after the values; they are ignored.
    data = docs[0] if docs else None
    if data is None or data == {}:
        raise ConfigError(f"config file {path} is empty (no key: value pairs); fill it in, e.g. from "
                          f"config/soft_tiny.yml, or leave out --config_path to use {DEFAULT_CONFIG}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value pairs")
    return data


def _split_cli(argv):
    """``argv`` -> (config_path or None, [(key, value_string)], wants_help)."""
    config_path = None
    pairs = []
    wants_help = False
    i = 0
    while i < len(argv):
        token = str(argv[i])
        if token in ("-h", "--help"):
            wants_help = True
            i += 1
            continue
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected command-line argument {token!r}: arguments are --key value pairs")
        body = token[2:]
        if "=" in body:
            name, value = body.split("=", 1)
            i += 1
        else:
            name = body
            if i + 1 < len(argv) and not (str(argv[i + 1]).startswith("--") and len(str(argv[i + 1])) > 2):
                value = argv[i + 1]
                i += 2
            else:
                value = None  # a bare flag
                i += 1
        if name.replace("-", "_") == "config_path":
            if value is None:
                raise ConfigError("--config_path needs a file name")
            config_path = value
        else:
            pairs.append((name, value))
    return config_path, pairs, wants_help


def _finish(values, explicit, config_path, command_line=()):
    where = "config"
    if values["autoaugment"] and values["randaugment"]:
        raise ConfigError(f"autoaugment and randaugment ({values['randaugment']!r}) are both on; "
                          "set --autoaugment 0 or --randaugment ''")
    _check_backbone(values["backbone"], where)
    return Config(values, config_path, explicit, command_line)


def _defaults():
    return OrderedDict((k, copy.deepcopy(key.default)) for k, key in SCHEMA.items())


def _apply(values, explicit, pairs, where):
    """Set each (name, value) of ``pairs`` in ``values``; ignored old keys are dropped."""
    for name, value in pairs:
        if str(name).strip().replace("-", "_") in IGNORED_KEYS:
            continue
        canon = _canonical_name(name, where)
        key = SCHEMA[canon]
        if value is None and where == "on the command line":
            if key.kind not in ("bool", "auto_bool"):
                raise ConfigError(f"--{name} needs a value ({_TYPE_WORDS[key.kind]})")
            value = True
        values[canon] = _coerce(key, value, where)
        explicit.add(canon)


def make_config(overrides=None, config_path=None):
    """A validated Config from the schema defaults (or ``config_path``) plus a dict of ``overrides``.

    Meant for code and tests: ``make_config({"dataset_path": root, "train_image_size": 32})``. The
    ``overrides`` count as given on the command line (``Config.command_line_keys``).
    """
    values, explicit = _defaults(), set()
    if config_path:
        config_path = _resolve_config_path(config_path)
        _apply(values, explicit, _read_yaml(config_path).items(), f"in {config_path}")
    given = set()
    _apply(values, given, (overrides or {}).items(), "in overrides")
    return _finish(values, explicit | given, config_path, given)


def load_config(argv=None):
    """Parse ``--config_path FILE`` and ``--key value`` overrides (``argv`` defaults to ``sys.argv[1:]``).

    ``--help`` prints every key and exits. Raises ConfigError for unknown keys, wrong types and
    out-of-range values.
    """
    if argv is None:
        argv = sys.argv[1:]
    config_path, pairs, wants_help = _split_cli(list(argv))
    if wants_help:
        print(format_help())
        raise SystemExit(0)
    path = _resolve_config_path(config_path or DEFAULT_CONFIG)
    values, explicit = _defaults(), set()
    _apply(values, explicit, _read_yaml(path).items(), f"in {path}")
    given = set()
    _apply(values, given, pairs, "on the command line")
    return _finish(values, explicit | given, path, given)
