"""Optimizers of the training recipe: AdamW as ``torch.optim.AdamW``, SGD with momentum, weight-decay groups,
gradient centralisation and global-norm clipping.

Parameters WITHOUT weight decay (every other trainable parameter gets ``weight_decay``), as the original
``main.py`` (timm's ``add_weight_decay``):

* one-dimensional parameters (norm scales / shifts, biases);
* names ending in ``.bias``;
* the names returned by the model's ``no_weight_decay()`` (SOFT: ``cls_token``; the positional tables ARE
  decayed; SwiftFormer: none, so its [C, 1, 1] layer scales are decayed);
* names containing any fragment of ``no_weight_decay_filter`` (a list, or a comma-separated string).

BatchNorm moving statistics are not trainable and never reach the optimizer.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.ops import functional as F

__all__ = ["parse_name_filter", "model_no_weight_decay", "uses_weight_decay", "split_weight_decay", "AdamW",
           "build_optimizer", "GradientPreprocess", "SquaredNorm", "gc_mask"]


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


def model_no_weight_decay(net):
    """The parameter names ``net.no_weight_decay()`` exempts from weight decay (a set; empty without the hook).

    A network wrapped by mixed precision (``_backbone``) is looked through.
    """
    while not hasattr(net, "no_weight_decay") and hasattr(net, "_backbone"):
        net = net._backbone  # pylint: disable=protected-access
    hook = getattr(net, "no_weight_decay", None)
    return set(hook()) if callable(hook) else set()


def uses_weight_decay(name, shape, extra_filter=(), skip_names=()):
    """Whether the parameter ``name`` of ``shape`` is decayed.

    ``skip_names``: exact names exempted by the model (``no_weight_decay()``); ``extra_filter``: name fragments.
    """
    if len(tuple(shape)) <= 1 or name.endswith(".bias") or name in skip_names:
        return False
    return not any(frag in name for frag in extra_filter)


def split_weight_decay(params, no_weight_decay_filter=(), skip_names=None):
    """(decayed, not decayed) lists of the trainable ``params``.

    ``params``: a Cell (its trainable parameters; its ``no_weight_decay()`` names are exempted unless
    ``skip_names`` is given) or an iterable of Parameters.
    """
    if isinstance(params, nn.Cell):
        if skip_names is None:
            skip_names = model_no_weight_decay(params)
        params = params.trainable_params()
    skip_names = set(skip_names or ())
    extra = parse_name_filter(no_weight_decay_filter)
    decay, no_decay = [], []
    for p in params:
        (decay if uses_weight_decay(p.name, p.shape, extra, skip_names) else no_decay).append(p)
    return decay, no_decay


_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor")
def _adamw_update_one(fused, beta1, beta2, eps, lr_scale, decay_scale, lr, weight_decay, param, m, v, gradient):
    """One parameter through the fused kernel, which computes ``p -= lr' * (m / (sqrt(v) + eps') + wd' * p)``.

    With ``lr' = lr * sqrt(bc2) / bc1``, ``eps' = eps * sqrt(bc2)`` and ``wd' = wd * bc1 / sqrt(bc2)`` this is
    torch's ``p -= lr * wd * p; p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)`` (bc = bias correction).
    """
    return fused(param, m, v, lr * lr_scale, beta1, beta2, eps, weight_decay * decay_scale,
                 ops.cast(gradient, param.dtype))


class AdamW(nn.Optimizer):
    r"""AdamW exactly as ``torch.optim.AdamW`` (decoupled weight decay, both bias corrections).

    For step :math:`t = 1, 2, \dots` (``global_step`` counts the steps taken) and each parameter :math:`p`:

    .. math::
        p \leftarrow p - \eta\lambda p,\quad m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        p \leftarrow p - \frac{\eta}{1-\beta_1^t}\,\frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    MindSpore's ``nn.AdamWeightDecay`` leaves out both corrections (its first step is 3.16x larger at
    :math:`\beta_2 = 0.999`). The corrections are folded into the learning rate, epsilon and decay handed to
    the fused ``ops.AdamWeightDecay`` kernel (see ``_adamw_update_one``).

    Args:
        params: Parameters or group dicts (``weight_decay`` per group, ``order_params``), as ``nn.Optimizer``.
        learning_rate: a float, or the per-step array of ``src.lr_generator.get_lr`` (indexed by ``global_step``).
        beta1, beta2, eps: Adam's coefficients. weight_decay: the default decay of parameters not in a group.

    State: ``adam_m.<name>``, ``adam_v.<name>`` (moments) and ``global_step`` (int32 [1]).
    """

    def __init__(self, params, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(learning_rate, params, weight_decay)
        for label, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"AdamW {label} must be in [0, 1), got {value}.")
        if float(eps) <= 0:
            raise ValueError(f"AdamW eps must be > 0, got {eps}.")
        self.beta1 = ms.Tensor(float(beta1), ms.float32)
        self.beta2 = ms.Tensor(float(beta2), ms.float32)
        self.eps = ms.Tensor(float(eps), ms.float32)
        self.moments1 = self._parameters.clone(prefix="adam_m", init="zeros")
        self.moments2 = self._parameters.clone(prefix="adam_v", init="zeros")
        self.fused = ops.AdamWeightDecay()

    def construct(self, gradients):
        weight_decay = self.get_weight_decay()
        lr = self.get_lr()
        step = ops.cast(self.global_step, ms.float32).reshape(()) + 1.0
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        bias_correction1 = 1.0 - ops.pow(self.beta1, step)
        root_correction2 = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        lr_scale = root_correction2 / bias_correction1
        decay_scale = bias_correction1 / root_correction2
        eps = self.eps * root_correction2
        if not self.is_group:
            weight_decay = (weight_decay,) * len(self._parameters)
        if self.is_group_lr:
            return self.hyper_map(ops.partial(_adamw_update, self.fused, self.beta1, self.beta2, eps, lr_scale,
                                              decay_scale), lr, weight_decay, self._parameters, self.moments1,
                                  self.moments2, gradients)
        return self.hyper_map(ops.partial(_adamw_update, self.fused, self.beta1, self.beta2, eps, lr_scale,
                                          decay_scale, lr), weight_decay, self._parameters, self.moments1,
                              self.moments2, gradients)

def build_optimizer(config, params, learning_rate, skip_names=None):
    """AdamW (``opt: adamw``, as ``torch.optim.AdamW``) or SGD with momentum (``opt: sgd``) with weight-decay groups.

    Args:
        params: the network (a Cell: its trainable parameters, and its ``no_weight_decay()`` names are
            exempted) or a list of Parameters.
        learning_rate: a float or the per-step array of ``src.lr_generator.get_lr``.
        skip_names: exact parameter names without weight decay (default: the Cell's ``no_weight_decay()``).
    """
    if isinstance(params, nn.Cell):
        if skip_names is None:
            skip_names = model_no_weight_decay(params)
        params = params.trainable_params()
    params = list(params)
    if isinstance(learning_rate, (np.ndarray, list, tuple)):
        learning_rate = ms.Tensor(np.asarray(learning_rate, np.float32))
    wd = float(config.weight_decay)
    decay, no_decay = split_weight_decay(params, getattr(config, "no_weight_decay_filter", ()), skip_names or ())
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": wd})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    groups.append({"order_params": params})
    opt = str(config.opt).lower()
    if opt == "adamw":
        return AdamW(groups, learning_rate=learning_rate, beta1=float(config.beta1), beta2=float(config.beta2),
                     eps=float(getattr(config, "eps", 1e-8)))
    if opt in ("sgd", "momentum"):
        return nn.Momentum(groups, learning_rate=learning_rate, momentum=float(config.momentum), weight_decay=0.0)
    raise ValueError(f"Unknown opt {config.opt!r}; use adamw or sgd.")


def gc_mask(params):
    """Gradient-centralisation flags: True for conv / dense weights (parameters of rank >= 2 named ``*weight``)."""
    return tuple(len(p.shape) >= 2 and p.name.endswith("weight") for p in params)


_square_sum = ops.MultitypeFuncGraph("square_sum")


@_square_sum.register("Tensor")
def _tensor_square_sum(grad):
    return ops.reduce_sum(ops.square(grad))


class SquaredNorm(nn.Cell):
    """The squared global norm of a tuple of gradients: Square + ReduceSum per gradient, then AddN.
    ``finite(grads)``: ``mindspore.amp.all_finite``. (The CPU speed layer's ``models.cpu.FlatSquaredNorm`` has
    the same interface.)"""

    def __init__(self):
        super().__init__()
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        return ops.addn(self.hyper_map(_square_sum, grads))

    def finite(self, grads):
        return ms.amp.all_finite(grads)


_centralize = ops.MultitypeFuncGraph("centralize")


@_centralize.register("Bool", "Tensor")
def _tensor_centralize(flag, grad):
    """grad minus its mean over all axes but the first, where ``flag`` (conv / dense weights)."""
    if flag:
        return grad - grad.mean(axis=tuple(range(1, grad.ndim)), keep_dims=True)
    return grad


_scale_by = ops.MultitypeFuncGraph("scale_by")


@_scale_by.register("Tensor", "Tensor")
def _tensor_scale_by(factor, grad):
    return grad * ops.cast(factor, grad.dtype)


class GradientPreprocess(nn.Cell):
    """Loss-scaled gradients -> the gradients the optimizer takes, and whether they are finite.

    ``preprocess(grads, scale) -> (grads, finite)``: gradient centralisation (conv / dense weights), the
    unscaling by ``scale`` and clipping to a global norm, in as few passes over the gradients as possible:
    with clipping, one pass sums the squares (the global norm; a NaN or Inf anywhere makes it non-finite,
    so it is also the finiteness check) and one pass multiplies every gradient by clip / max(norm, clip) /
    scale; without it, the finiteness check (``squared_norm.finite``) and (for a scale other than 1) one
    multiply by 1 / scale. A gradient so large that its squares overflow float32 counts as not finite (the step
    is skipped).

    Args:
        params: the optimizer's parameters (their order is the order of the gradients).
        gc_flag: subtract from each conv / dense weight gradient its mean over all axes but the first
            (linear, so it is applied before the unscaling).
        clip_grad: maximum global L2 norm of the unscaled gradients (``torch.nn.utils.clip_grad_norm_``;
            MindSpore's ``clip_by_global_norm`` factor); 0 or None disables clipping.
        unscale: False when the loss scale is a constant 1 (the multiply by 1 / scale is left out).
        squared_norm: the cell that sums the squares and checks finiteness (default ``SquaredNorm()``; the
            train step of a network rewritten by the CPU speed layer passes ``models.cpu.FlatSquaredNorm()``).

    Inputs: ``grads`` (tuple of float32 tensors, loss-scaled), ``scale`` (scalar float32 loss scale).
    Outputs: (tuple of tensors, scalar bool).
    """

    def __init__(self, params, gc_flag=False, clip_grad=0.0, unscale=True, squared_norm=None):
        super().__init__(auto_prefix=False)
        self.gc_flags = gc_mask(params) if gc_flag else tuple(False for _ in params)
        self.use_gc = bool(gc_flag) and any(self.gc_flags)
        self.clip = float(clip_grad or 0.0)
        self.use_clip = self.clip > 0
        self.unscale = bool(unscale)
        self.hyper_map = ops.HyperMap()
        self.squared_norm = squared_norm if squared_norm is not None else SquaredNorm()

    def construct(self, grads, scale):
        if self.use_gc:
            grads = self.hyper_map(_centralize, self.gc_flags, grads)
        if self.use_clip:
            norm = ops.sqrt(self.squared_norm(grads)) / scale
            finite = ops.isfinite(norm)
            factor = self.clip / ops.maximum(norm, self.clip) / scale
            return self.hyper_map(F.partial(_scale_by, factor), grads), finite
        finite = self.squared_norm.finite(grads)
        if self.unscale:
            grads = self.hyper_map(F.partial(_scale_by, 1.0 / scale), grads)
        return grads, finite
