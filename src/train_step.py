"""The training step of the recipe: one cell that makes exactly one optimizer step per call.

    >>> step = build_train_step(config, net, learning_rate=lrs, rank_size=1)
    >>> loss, grads_finite, loss_scale = step(images, soft_targets)   # or mindspore.train.Model(step).train(...)

``TrainStep`` (what ``build_train_step`` returns) does, on the device and without host reads:
forward (+ a frozen teacher for distillation), loss, loss-scaled gradients, the data-parallel mean
(``rank_size > 1``), float32 master gradients, gradient centralisation, unscaling, global-norm clipping and
the finiteness check (``src.optimizer.GradientPreprocess``: two passes over the gradients), the optimizer
(AdamW as ``torch.optim.AdamW``, or SGD with momentum), the model EMA (timm's ModelEma over every parameter, BatchNorm statistics included), the loss-scale update and the
bookkeeping of the ``train_state.*`` counters. A step whose gradients (or loss) are not finite changes
nothing but the loss scale and the counters (the BatchNorm statistics its forward pass moved are put back).

Parameters of the cell besides the network's (every name starts with a prefix of
``models.checkpoint.TRAINING_STATE_PREFIXES``):

* the optimizer's ``adam_m.*`` / ``adam_v.*`` (AdamW) or ``moments.*`` (SGD), ``global_step`` and the
  ``learning_rate`` table;
* ``ema.<name>`` (with ``model_ema``): the moving averages of every network parameter;
* ``loss_scale`` (float32) and ``loss_scale_good_steps`` (int32: good steps since the last change of a
  dynamic scale);
* ``train_state.loss_sum`` / ``train_state.loss_count``: finite losses since the last ``reset_stats``;
  ``train_state.bad_streak``: the current run of skipped (non-finite) steps; ``train_state.worst_streak``:
  the longest run since the reset; ``train_state.first_bad_step``: the ``global_step`` of the first skipped
  step since the reset (-1: none);
* ``teacher.*`` (distillation): the frozen teacher, rebuilt from ``teacher_path``; not training state, so
  ``checkpoint_parameters()`` leaves it out together with the learning-rate table (and ``momentum``, the
  constant coefficient ``nn.Momentum`` keeps as a Parameter under ``opt: sgd``).
"""
import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.ops import functional as F

from models import is_accelerated
from src.cross_entropy import DistillationLoss, get_loss
from src.optimizer import GradientPreprocess, build_optimizer

__all__ = ["TrainStep", "NetWithLoss", "FrozenTeacher", "build_teacher", "build_train_step"]

TEACHER_PREFIX = "teacher."

_cast_like = ops.MultitypeFuncGraph("cast_like")


@_cast_like.register("Tensor", "Tensor")
def _tensor_cast_like(param, grad):
    return ops.cast(grad, param.dtype)


_ema_update_one = ops.MultitypeFuncGraph("ema_update_one")


@_ema_update_one.register("Number", "Tensor", "Tensor")
def _tensor_ema_update_one(decay, ema, param):
    """ema <- decay * ema + (1 - decay) * param (timm's ModelEma)."""
    return ops.assign(ema, ema * decay + ops.cast(param, ema.dtype) * (1.0 - decay))


_assign_from_flat = ops.MultitypeFuncGraph("assign_from_flat")


@_assign_from_flat.register("Tensor", "Tensor", "Number", "Number")
def _tensor_assign_from_flat(flat, param, start, end):
    """param <- flat[start:end] (float32) in param's shape and dtype."""
    return ops.assign(param, ops.cast(flat[start:end].reshape(param.shape), param.dtype))


def _unwrap(net):
    """The backbone inside a mixed-precision wrapper (``_backbone``), or ``net`` itself."""
    while hasattr(net, "_backbone"):
        net = net._backbone  # pylint: disable=protected-access
    return net


_as_flat_float32 = ops.MultitypeFuncGraph("as_flat_float32")


@_as_flat_float32.register("Tensor")
def _tensor_as_flat_float32(tensor):
    return ops.cast(tensor, ms.float32).reshape(-1)


def _flatten(tensors):
    """A tuple of tensors as one float32 vector [sum of their sizes] (their elements in order): one Concat.
    (A map, not a generator: graph mode unrolls a generator into nested calls, limited to a depth of 1000.)"""
    return ops.concat(ops.HyperMap()(_as_flat_float32, tensors))


def _scalar(value, dtype, name):
    return ms.Parameter(ms.Tensor(value, dtype), name=name, requires_grad=False)


class FrozenTeacher(nn.Cell):
    """A teacher network that stays in evaluation mode and out of training.

    Its parameters are renamed ``teacher.<name>`` and take no gradient; ``set_train(True)`` on any cell
    above it (``Model.train`` does that) leaves it in evaluation mode. Input [B, 3, H, W] -> logits [B, C].
    """

    def __init__(self, network):
        super().__init__(auto_prefix=False)
        self.network = network
        network.update_parameters_name(TEACHER_PREFIX)
        for param in network.get_parameters():
            param.requires_grad = False
        self.set_train(False)

    def add_flags_recursive(self, **flags):
        if "training" in flags:
            flags["training"] = False
        return super().add_flags_recursive(**flags)

    def construct(self, images):
        return ops.stop_gradient(ops.cast(self.network(images), ms.float32))


def build_teacher(config):
    """The frozen teacher of ``config.teacher_model`` with the weights of ``config.teacher_path``.

    ``teacher_model``: a registered model (``models.create_model``) or, when mindcv is installed, a mindcv
    model; ``class_num`` outputs. Raises ValueError (one sentence) for a missing name, file or a checkpoint
    that does not fit.
    """
    from models import create_model, list_models, load_weights

    name = str(config.teacher_model or "").strip()
    path = str(config.teacher_path or "").strip()
    if not name or not path:
        raise ValueError(f"distillation_type {config.distillation_type} needs a teacher: set teacher_model "
                         "(a model name) and teacher_path (its MindSpore checkpoint).")
    num_classes = int(config.class_num)
    if name in list_models(include_benchmark=True):
        teacher = create_model(name, num_classes=num_classes)
    else:
        try:
            import mindcv
        except ImportError:
            raise ValueError(f"teacher_model {name!r} is not a registered model ({', '.join(list_models())}) "
                             "and mindcv is not installed.") from None
        if name not in mindcv.list_models():
            raise ValueError(f"teacher_model {name!r} is neither a registered model nor a mindcv model.")
        teacher = mindcv.create_model(name, num_classes=num_classes, pretrained=False)
    try:
        load_weights(teacher, path, model_name=name)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"teacher_path: {err}") from None
    return FrozenTeacher(teacher)


class NetWithLoss(nn.Cell):
    """Network + loss: (images [B, 3, H, W], targets [B, C]) -> scalar float32 loss.

    With ``teacher`` (a ``FrozenTeacher``) and ``distillation`` (a ``DistillationLoss``) the network's
    (head, dist_head) outputs are scored against the targets and the teacher's logits of the same images.
    """

    def __init__(self, network, loss_fn, teacher=None, distillation=None):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn
        self.teacher = teacher
        self.distillation = distillation
        self.distill = teacher is not None

    def construct(self, images, targets):
        outputs = self.network(images)
        if self.distill:
            return self.distillation(outputs, targets, self.teacher(images))
        return self.loss_fn(outputs, targets)


class TrainStep(nn.Cell):
    """One optimizer step per call: ``(images, targets) -> (loss, grads_finite, loss_scale)``.

    Args:
        net_with_loss: a ``NetWithLoss`` (its ``network`` is the trained backbone).
        optimizer: over the backbone's trainable parameters (``src.optimizer.build_optimizer``).
        loss_scale: the (initial) loss scale; a constant 1 skips the unscaling multiply.
        dynamic_loss_scale: halve the scale (never below 1) on non-finite gradients, double it after
            ``scale_window`` finite steps in a row.
        gc_flag, clip_grad: see ``src.optimizer.GradientPreprocess`` (for a network rewritten by the CPU speed
            layer, ``models.is_accelerated``, its global norm is the layer's ``FlatSquaredNorm``).
        rank_size: > 1 averages the gradients over the data-parallel group.
        ema_decay: None, or the decay of the moving average of every backbone parameter (``ema.<name>``).

    Outputs: ``loss`` (scalar float32, before the update), ``grads_finite`` (scalar bool: the step was
    applied) and ``loss_scale`` (scalar float32, after this step's adjustment).
    """

    def __init__(self, net_with_loss, optimizer, loss_scale=1.0, dynamic_loss_scale=False, scale_window=2000,
                 gc_flag=False, clip_grad=0.0, rank_size=1, ema_decay=None):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss
        self.network = net_with_loss.network
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        squared_norm = None
        if is_accelerated(self.network):
            from models.cpu import FlatSquaredNorm
            squared_norm = FlatSquaredNorm()
        self.preprocess = GradientPreprocess(self.weights, gc_flag, clip_grad,
                                             unscale=bool(dynamic_loss_scale) or float(loss_scale) != 1.0,
                                             squared_norm=squared_norm)
        self.use_reducer = int(rank_size) > 1
        self.reducer = nn.DistributedGradReducer(self.weights, True, int(rank_size)) if self.use_reducer else None

        self.dynamic_loss_scale = bool(dynamic_loss_scale)
        self.scale_window = int(scale_window)
        self.loss_scale = _scalar(float(loss_scale), ms.float32, "loss_scale")
        self.loss_scale_good_steps = _scalar(0, ms.int32, "loss_scale_good_steps")

        self.loss_sum = _scalar(0.0, ms.float32, "train_state.loss_sum")
        self.loss_count = _scalar(0, ms.int32, "train_state.loss_count")
        self.bad_streak = _scalar(0, ms.int32, "train_state.bad_streak")
        self.worst_streak = _scalar(0, ms.int32, "train_state.worst_streak")
        self.first_bad_step = _scalar(-1, ms.int32, "train_state.first_bad_step")

        # BatchNorm moving statistics: the forward pass updates them, a skipped step puts them back
        # (saved as one flat copy: one Concat, where a copy per tensor costs a launch per tensor on CPU)
        self.statistics = ms.ParameterTuple([p for p in self.network.get_parameters() if not p.requires_grad])
        self.has_statistics = len(self.statistics) > 0
        ends = np.cumsum([int(np.prod(p.shape)) for p in self.statistics]).tolist()
        self.statistics_starts, self.statistics_ends = tuple([0] + ends[:-1]), tuple(ends)
        self.use_ema = ema_decay is not None
        if self.use_ema:
            self.ema_sources = ms.ParameterTuple(list(self.network.get_parameters()))
            self.ema_params = self.ema_sources.clone(prefix="ema", init="same")
            for param in self.ema_params:
                param.requires_grad = False
            self.ema_decay = float(ema_decay)

    # ---------------------------------------------------------------------------------- graph
    def _ema_update(self):
        # a HyperMap, not a Python loop: graph mode unrolls a loop into nested calls, and the ~900 parameters of
        # soft_huge exceed MindSpore's call-depth limit of 1000
        return self.hyper_map(F.partial(_ema_update_one, self.ema_decay), self.ema_params, self.ema_sources)

    def _restore_statistics(self, saved):
        """Put the BatchNorm statistics back from their flat copy ``saved`` (``_flatten(self.statistics)``)."""
        return self.hyper_map(F.partial(_assign_from_flat, saved), self.statistics, self.statistics_starts,
                              self.statistics_ends)

    def _update_loss_scale(self, applied):
        """Dynamic scale: halve on a skipped step (>= 1), double after ``scale_window`` good steps."""
        scale = self.loss_scale
        good = ops.select(applied, self.loss_scale_good_steps + 1, ops.zeros_like(self.loss_scale_good_steps))
        grow = good >= self.scale_window
        doubled = scale * 2.0
        grown = ops.select(ops.logical_and(grow, ops.isfinite(doubled)), doubled, scale)
        new_scale = ops.select(applied, grown, ops.maximum(scale * 0.5, ops.ones_like(scale)))
        ops.assign(self.loss_scale_good_steps, ops.select(grow, ops.zeros_like(good), good))
        ops.assign(self.loss_scale, new_scale)
        return True

    def _record(self, loss, applied, step_index):
        skipped = ops.logical_not(applied)
        streak = ops.select(skipped, self.bad_streak + 1, ops.zeros_like(self.bad_streak))
        ops.assign(self.bad_streak, streak)
        ops.assign(self.worst_streak, ops.maximum(self.worst_streak, streak))
        first = ops.logical_and(skipped, self.first_bad_step < 0)
        ops.assign(self.first_bad_step, ops.select(first, step_index, self.first_bad_step))
        loss_finite = ops.isfinite(loss)
        ops.assign_add(self.loss_sum, ops.select(loss_finite, loss, ops.zeros_like(loss)))
        ops.assign_add(self.loss_count, ops.cast(loss_finite, ms.int32))
        return True

    def construct(self, images, targets):
        scale = self.loss_scale * 1.0
        step_index = self.optimizer.global_step.reshape(()) * 1
        statistics = _flatten(self.statistics) if self.has_statistics else None
        loss = self.net_with_loss(images, targets)
        sens = ops.ones_like(loss) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.net_with_loss, self.weights)(images, targets, sens)
        if self.use_reducer:
            grads = self.reducer(grads)
        grads = self.hyper_map(_cast_like, self.weights, grads)  # float32 master weights under O2 / O3
        grads, grads_finite = self.preprocess(grads, scale)  # centralised, unscaled, clipped
        applied = ops.logical_and(grads_finite, ops.isfinite(loss))
        if applied:
            loss = F.depend(loss, self.optimizer(grads))
            if self.use_ema:
                loss = F.depend(loss, self._ema_update())
        elif self.has_statistics:
            loss = F.depend(loss, self._restore_statistics(statistics))
        if self.dynamic_loss_scale:
            loss = F.depend(loss, self._update_loss_scale(applied))
        loss = F.depend(loss, self._record(loss, applied, step_index))
        return loss, applied, self.loss_scale * 1.0

    # ---------------------------------------------------------------------------------- host helpers
    def read_stats(self):
        """The device-side counters as Python values: ``loss_sum``, ``loss_count``, ``mean_loss`` (NaN when no
        finite loss), ``bad_streak``, ``worst_streak``, ``first_bad_step``, ``loss_scale`` and ``global_step``."""
        values = {
            "loss_sum": float(self.loss_sum.asnumpy()),
            "loss_count": int(self.loss_count.asnumpy()),
            "bad_streak": int(self.bad_streak.asnumpy()),
            "worst_streak": int(self.worst_streak.asnumpy()),
            "first_bad_step": int(self.first_bad_step.asnumpy()),
            "loss_scale": float(self.loss_scale.asnumpy()),
            "global_step": int(self.optimizer.global_step.asnumpy().reshape(-1)[0]),
        }
        values["mean_loss"] = values["loss_sum"] / values["loss_count"] if values["loss_count"] else float("nan")
        return values

    def reset_stats(self):
        """Start new loss / streak statistics (the current ``bad_streak`` goes on)."""
        self.loss_sum.set_data(ms.Tensor(0.0, ms.float32))
        self.loss_count.set_data(ms.Tensor(0, ms.int32))
        self.worst_streak.set_data(ms.Tensor(0, ms.int32))
        self.first_bad_step.set_data(ms.Tensor(-1, ms.int32))

    def swap_ema(self):
        """Exchange the network's parameters with their EMA copies (call again to swap back)."""
        for ema, param in zip(self.ema_params, self.ema_sources):
            current = param.value().copy()
            param.set_data(ema.value().copy())
            ema.set_data(current)

    def reset_ema(self):
        """Start the EMA from the network's current parameters (e.g. after loading weights into the network)."""
        for ema, param in zip(self.ema_params, self.ema_sources):
            ema.set_data(param.value().copy())

    def checkpoint_parameters(self):
        """The Parameters a training checkpoint holds: all but the learning-rate table, the teacher and SGD's
        constant ``momentum`` coefficient."""
        return [p for p in self.get_parameters()
                if not p.name.startswith(("learning_rate", TEACHER_PREFIX)) and p.name != "momentum"]


def build_train_step(config, net, learning_rate=None, rank_size=1):
    """The ``TrainStep`` of the configured recipe for ``net`` (already built, with mixed precision applied).

    Args:
        config: a ``Config`` (opt, betas, eps, momentum, weight_decay, no_weight_decay_filter, clip_grad,
            gc_flag, loss_scale, loss_scale_type, scale_window, model_ema, model_ema_decay, loss_name, class_num,
            distillation_*, teacher_*).
        net: the network; its ``no_weight_decay()`` names are trained without weight decay.
        learning_rate: a float or the per-step array of ``src.lr_generator.get_lr`` (None: ``lr_max``, constant).
        rank_size: data-parallel group size (> 1: gradient mean over the group).

    Raises ValueError for a distillation setting that cannot work (no teacher, no distillation head).
    """
    if learning_rate is None:
        learning_rate = float(config.lr_max)
    optimizer = build_optimizer(config, net, learning_rate)
    base_loss = get_loss(config)
    kind = str(config.distillation_type).lower()
    if kind == "none":
        net_with_loss = NetWithLoss(net, base_loss)
    else:
        if not getattr(_unwrap(net), "distillation", False):
            raise ValueError(f"distillation_type {kind} trains a distillation head, but {config.backbone} has "
                             "none (use a SwiftFormer with distillation, or distillation_type none).")
        distillation = DistillationLoss(base_loss, kind, float(config.distillation_alpha),
                                        float(config.distillation_tau))
        net_with_loss = NetWithLoss(net, base_loss, build_teacher(config), distillation)
    ema_decay = float(config.model_ema_decay) if config.model_ema else None
    step = TrainStep(net_with_loss, optimizer, loss_scale=float(config.loss_scale),
                     dynamic_loss_scale=str(config.loss_scale_type).lower() == "dynamic",
                     scale_window=int(config.scale_window), gc_flag=bool(config.gc_flag),
                     clip_grad=float(config.clip_grad), rank_size=int(rank_size), ema_decay=ema_decay)
    return step.set_train(True)
