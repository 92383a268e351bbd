"""Optimizers with a no-weight-decay filter, gradient centralisation and global-norm clipping.

Parameters WITHOUT weight decay (everything else trainable gets ``weight_decay``):

* one-dimensional parameters: norm scales / shifts (``gamma`` / ``beta``), biases, layer scales;
* names ending in ``.bias``, ``.gamma`` or ``.beta``;
* positional tables (a name component starting with ``pos_embed``) and class tokens (``cls_token``);
* names containing any entry of ``no_weight_decay_filter`` (a list, or a comma-separated string).

BatchNorm moving statistics are not trainable and never reach the optimizer.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

__all__ = ["parse_name_filter", "uses_weight_decay", "split_weight_decay", "build_optimizer",
           "GradientPreprocess", "gc_mask"]

_NO_DECAY_SUFFIXES = (".bias", ".gamma", ".beta")
_NO_DECAY_PREFIXES = ("pos_embed", "cls_token")


def parse_name_filter(value):
    """``no_weight_decay_filter`` as a tuple of non-empty name fragments (list, tuple or 'a,b' string)."""
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.replace(";", ",").split(",")
    elif isinstance(value, (list, tuple, set)):
        items = [str(v) for v in value]
    else:
        raise ValueError(f"no_weight_decay_filter must be a list of names or a comma-separated string, got {value!r}.")
    return tuple(s.strip() for s in items if s.strip())


def uses_weight_decay(name, shape, extra_filter=()):
    """Whether the parameter ``name`` of ``shape`` is decayed."""
    if len(tuple(shape)) <= 1:
        return False
    if name.endswith(_NO_DECAY_SUFFIXES):
        return False
    if any(part.startswith(_NO_DECAY_PREFIXES) for part in name.split(".")):
        return False
    if any(frag in name for frag in extra_filter):
        return False
    return True


def split_weight_decay(params, no_weight_decay_filter=()):
    """(decayed, not decayed) lists of the trainable ``params`` (a Cell or an iterable of Parameters)."""
    if isinstance(params, nn.Cell):
        params = params.trainable_params()
    extra = parse_name_filter(no_weight_decay_filter)
    decay, no_decay = [], []
    for p in params:
        (decay if uses_weight_decay(p.name, p.shape, extra) else no_decay).append(p)
    return decay, no_decay


def build_optimizer(config, params, learning_rate):
    """AdamW (``opt: adamw``) or SGD with momentum (``opt: sgd``) over ``params`` with weight-decay groups.

    ``learning_rate``: a float or the per-step array of ``src.lr_generator.get_lr``.
    """
    if isinstance(params, nn.Cell):
        params = params.trainable_params()
    params = list(params)
    if isinstance(learning_rate, (np.ndarray, list, tuple)):
        learning_rate = ms.Tensor(np.asarray(learning_rate, np.float32))
    wd = float(config.weight_decay)
    decay, no_decay = split_weight_decay(params, getattr(config, "no_weight_decay_filter", ()))
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": wd})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    groups.append({"order_params": params})
    opt = str(config.opt).lower()
    if opt == "adamw":
        return nn.AdamWeightDecay(groups, learning_rate=learning_rate, beta1=float(config.beta1),
                                  beta2=float(config.beta2), eps=float(getattr(config, "eps", 1e-8)),
                                  weight_decay=0.0)
    if opt in ("sgd", "momentum"):
        return nn.Momentum(groups, learning_rate=learning_rate, momentum=float(config.momentum),
                           weight_decay=0.0)
    raise ValueError(f"Unknown opt {config.opt!r}; use adamw or sgd.")


def gc_mask(params):
    """Gradient-centralisation flags: True for conv / dense weights (decayed parameters of rank >= 2)."""
    return tuple(len(p.shape) >= 2 and p.name.endswith("weight") and uses_weight_decay(p.name, p.shape)
                 for p in params)


class GradientPreprocess(nn.Cell):
    """Gradient centralisation (conv / dense weights) then clipping to a global norm.

    Args:
        params: the optimizer's parameters (their order is the order of the gradients).
        gc_flag: subtract from each conv / dense weight gradient its mean over all axes but the first.
        clip_grad: maximum global L2 norm of all gradients; 0 or None disables clipping.
    """

    def __init__(self, params, gc_flag=False, clip_grad=0.0):
        super().__init__(auto_prefix=False)
        self.gc_flags = gc_mask(params) if gc_flag else tuple(False for _ in params)
        self.use_gc = bool(gc_flag) and any(self.gc_flags)
        self.clip = float(clip_grad or 0.0)
        self.use_clip = self.clip > 0
        self.hyper_map = ops.HyperMap()

    @staticmethod
    def _centralize(flag, grad):
        if flag:
            axes = tuple(range(1, grad.ndim))
            return grad - grad.mean(axis=axes, keep_dims=True)
        return grad

    def construct(self, grads):
        if self.use_gc:
            grads = tuple(self._centralize(f, g) for f, g in zip(self.gc_flags, grads))
        if self.use_clip:
            grads = ops.clip_by_global_norm(grads, self.clip)
        return grads
