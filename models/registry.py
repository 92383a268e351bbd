"""Model registry: ``register_model``, ``create_model``, ``list_models``.

Every model family module registers its variant constructors with ``@register_model``.
A family module may also define the two hooks the PyTorch checkpoint converter uses:

* ``torch_param_names(net) -> dict``: our parameter name -> PyTorch state-dict name;
* ``variant_overrides_from_torch(state, name) -> dict``: constructor overrides (e.g. depths,
  ``num_classes``) inferred from the PyTorch state dict ``{torch_name: ndarray}`` when the checkpoint
  differs from the registered variant;
* optionally ``port_param_names(net)`` and ``PORT_UNUSED``: the names in checkpoints of the original
  MindSpore port (SOFT only).
"""
import difflib
import fnmatch
import sys

__all__ = ["register_model", "create_model", "list_models", "model_family"]

_ENTRYPOINTS = {}
_FAMILY_MODULE = {}


def register_model(fn):
    """Decorator: register ``fn`` (returning an ``nn.Cell``) under ``fn.__name__``."""
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise RuntimeError(f"model {name!r} is registered twice")
    _ENTRYPOINTS[name] = fn
    _FAMILY_MODULE[name] = fn.__module__
    return fn


def list_models(pattern="*", include_benchmark=False):
    """Sorted names of the registered models matching the shell-style ``pattern``.

    Models registered only for benchmarks (their name starts with ``bench_``) are left out
    unless ``include_benchmark`` is true.
    """
    names = [n for n in _ENTRYPOINTS if fnmatch.fnmatch(n, pattern)]
    if not include_benchmark:
        names = [n for n in names if not n.startswith("bench_")]
    return sorted(names)


def _check_name(name):
    if name not in _ENTRYPOINTS:
        close = difflib.get_close_matches(name, list(_ENTRYPOINTS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Valid models: {', '.join(list_models())}.")


def model_family(name):
    """The module that defines model ``name`` (where the converter hooks live)."""
    _check_name(name)
    return sys.modules[_FAMILY_MODULE[name]]


def create_model(name, num_classes=1000, pretrained=None, features_only=False, out_indices=(0, 1, 2, 3),
                 portable=False, **overrides):
    """Build a registered model.

    Args:
        name: a name from ``list_models()``.
        num_classes: size of the classification head (0: no head, the model returns its pooled feature).
        pretrained: optional path of a MindSpore ``.ckpt`` to start from (``models.checkpoint.load_pretrained``):
            a classifier of another size keeps its fresh initialisation (a warning names it, as in timm);
            every other parameter must fit.
        features_only: return a ``models.features.FeatureNet`` giving the stage maps ``out_indices``
            ([B, C_i, H/4/2^i, W/4/2^i]) instead of logits; a classification checkpoint loads into it with
            its head dropped.
        out_indices: the stages (0-3) a feature extractor returns.
        portable: True keeps the portable network (what GPU and Ascend run) even where the CPU speed layer
            would rewrite it (a CPU device target and ``SOFT_CPU_KERNELS`` not 0; see ``models.cpu_switch``):
            what export writes, and what tests compare the CPU layer with.
        **overrides: constructor arguments that replace the variant's defaults
            (e.g. ``drop_path_rate=0.1``, ``depths=(1, 3, 20, 4)``).

    Raises:
        ValueError: unknown name (the message lists the valid ones), bad ``out_indices``.
        CheckpointMismatchError: ``pretrained`` does not fit the model (besides its classifier).
    """
    from .checkpoint import load_pretrained
    from .cpu_switch import accelerate_if_enabled

    _check_name(name)
    if not features_only:
        net = _ENTRYPOINTS[name](num_classes=num_classes, **overrides)
        if pretrained:
            load_pretrained(net, pretrained, model_name=name)
    else:
        from .features import FeatureNet, check_out_indices

        check_out_indices(out_indices)  # before building: a bad value costs no model
        net = FeatureNet(_ENTRYPOINTS[name](num_classes=0, **overrides), out_indices)
        if pretrained:
            load_pretrained(net, pretrained, model_name=name)
    return net if portable else accelerate_if_enabled(net)
