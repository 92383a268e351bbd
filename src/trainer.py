"""Building blocks shared by train.py / eval.py: environment, network, train step, checkpoints.

* ``init_env(config) -> (rank_id, rank_size)``: the ONE place where the execution mode, device and
  the distributed group are set up (``mindspore.communication.init()`` when ``run_distribute``).
* ``build_network(config)``: registry model + drop path + mixed precision (``keep_fp32`` cells stay
  float32 under O2 / O3).
* ``TrainStep``: forward, loss, gradients (loss-scaled), all-reduce, unscale, finiteness check,
  gradient centralisation / clipping, optimizer, optional EMA; returns ``(loss, grads_finite)``.
  A step whose gradients are not finite does not update anything.
* ``load_network_checkpoint(net, path)``: load a (training or plain) checkpoint into a network,
  strictly; optimizer state and metadata are skipped; ``use_ema`` takes the EMA weights.
* ``run_training(config)``: the training loop used by train.py.
"""
import json
import os
import time

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import nn, ops  # noqa: E402
from mindspore.ops import functional as F  # noqa: E402

from src.callback import META_KEYS, CheckpointManager, StateMonitor, find_latest_checkpoint  # noqa: E402
from src.cross_entropy import get_loss  # noqa: E402
from src.eval_engine import EvalEngine  # noqa: E402
from src.logging import get_logger  # noqa: E402
from src.lr_generator import lr_from_config  # noqa: E402
from src.optimizer import GradientPreprocess, build_optimizer  # noqa: E402

__all__ = ["TrainingDiverged", "init_env", "build_network", "apply_amp", "TrainStep", "TRAIN_STATE_PREFIXES",
           "average_batchnorm_statistics",
           "load_network_checkpoint", "checkpoint_dir", "run_training", "cfg"]

# checkpoint entries that are training state, not network weights
TRAIN_STATE_PREFIXES = ("adam_m.", "adam_v.", "moments.", "moment1.", "moment2.", "accum.", "ema.",
                        "global_step", "learning_rate", "beta1_power", "beta2_power", "scale_sense",
                        "current_iterator_step", "last_overflow_iterator_step") + META_KEYS

MAX_BAD_GRAD_STEPS = 5


class TrainingDiverged(RuntimeError):
    """The loss (or the gradients) stopped being finite."""


def cfg(config, key, default=None):
    """``config.key`` or ``default`` when the key is absent or None."""
    value = getattr(config, key, default)
    return default if value is None else value


# --------------------------------------------------------------------------------------- environment
def _context_mode(value):
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("graph", "graph_mode", "0"):
            return ms.GRAPH_MODE
        if text in ("pynative", "pynative_mode", "1"):
            return ms.PYNATIVE_MODE
        raise ValueError(f"context_mode must be graph or pynative, got {value!r}.")
    return ms.PYNATIVE_MODE if int(value) == ms.PYNATIVE_MODE else ms.GRAPH_MODE


def init_env(config):
    """Execution mode, device, seed and (with ``run_distribute``) the communication group.

    Returns ``(rank_id, rank_size)``; everything else asks this function's result, never the
    environment, so a single place decides who is rank 0.
    """
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    target = str(cfg(config, "device_target", "CPU"))
    ms.set_context(mode=_context_mode(cfg(config, "context_mode", "graph")))
    if target == "CPU":
        ms.set_device("CPU")
    else:
        if cfg(config, "run_distribute", False):  # the launcher's DEVICE_ID / local rank
            from src.model_utils.device_adapter import get_device_id
            device_id = get_device_id()
        else:
            device_id = int(cfg(config, "device_id", 0))
        ms.set_device(target, device_id)
    ms.set_seed(int(cfg(config, "seed", 1)))
    rank_id, rank_size = 0, 1
    if cfg(config, "run_distribute", False):
        from mindspore.communication import get_group_size, get_rank, init
        init()
        rank_id, rank_size = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=rank_size)
    return rank_id, rank_size


# --------------------------------------------------------------------------------------- network
def apply_amp(net, amp_level):
    """Mixed precision ``amp_level`` (O0 / O1 / O2 / O3); cells with ``keep_fp32 = True`` stay float32."""
    level = str(amp_level or "O0").upper()
    if level not in ("O0", "O1", "O2", "O3"):
        raise ValueError(f"amp_level must be one of O0, O1, O2, O3, got {amp_level!r}.")
    if level == "O0":
        return net
    net = ms.amp.auto_mixed_precision(net, level)
    for _, cell in net.cells_and_names():
        if getattr(cell, "keep_fp32", False):
            cell.to_float(ms.float32)
    return net


def build_network(config, amp=True):
    """The backbone named by ``config.backbone`` with ``class_num`` classes (+ pretrained, amp)."""
    from models import create_model

    overrides = {}
    drop_path = float(cfg(config, "drop_path_rate", 0.0))
    if drop_path > 0:
        overrides["drop_path_rate"] = drop_path
    iters = cfg(config, "newton_iters", None)
    if iters is not None and str(config.backbone).startswith("soft") and int(iters) != 20:
        overrides["newton_iters"] = int(iters)
    net = create_model(str(config.backbone), num_classes=int(config.class_num), **overrides)
    pretrained = cfg(config, "pretrained", "")
    if pretrained:
        load_network_checkpoint(net, str(pretrained))
    if amp:
        net = apply_amp(net, cfg(config, "amp_level", "O0"))
    return net


def load_network_checkpoint(net, path, use_ema=False):
    """Load the network weights of ``path`` into ``net`` (every parameter must fit; clear error otherwise).

    Optimizer state, EMA copies and metadata in training checkpoints are skipped; with ``use_ema``
    and EMA copies present (``ema.<name>``), those are loaded instead of the raw weights.
    Returns the checkpoint's metadata (see ``src.callback.read_checkpoint_meta``).
    """
    from models import load_checkpoint_strict

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    entries = ms.load_checkpoint(path)
    meta = {}
    for key in META_KEYS:
        if key in entries:
            value = entries[key]
            meta[key] = value if isinstance(value, str) else value.asnumpy().item()
    if "class_names" in meta:
        meta["class_names"] = json.loads(meta["class_names"])
    if use_ema and any(k.startswith("ema.") for k in entries):
        weights = {k[len("ema."):]: v for k, v in entries.items() if k.startswith("ema.")}
    else:
        weights = {k: v for k, v in entries.items() if not k.startswith(TRAIN_STATE_PREFIXES)}
    load_checkpoint_strict(net, weights)
    return meta


# --------------------------------------------------------------------------------------- train step
_grad_scale = ops.MultitypeFuncGraph("grad_scale")


@_grad_scale.register("Tensor", "Tensor")
def _tensor_grad_scale(scale, grad):
    return grad * ops.cast(scale, grad.dtype)


_cast_like = ops.MultitypeFuncGraph("cast_like")


@_cast_like.register("Tensor", "Tensor")
def _tensor_cast_like(param, grad):
    return ops.cast(grad, param.dtype)


def grads_finite(grads):
    """Scalar bool: every gradient is finite (works for mixed float16 / float32 gradients on every device)."""
    bad = [ops.cast(ops.logical_not(ops.isfinite(g).all()), ms.float32) for g in grads]
    return ops.addn(bad) < 0.5


class TrainStep(nn.Cell):
    """One optimisation step; returns ``(loss, grads_finite)``.

    Args:
        network: the backbone (training mode outputs logits or a tuple of logits).
        loss_fn: loss(logits, label).
        optimizer: a MindSpore optimizer over (a subset of) the network's trainable parameters.
        loss_scale: fixed loss scale (the gradients are unscaled before clipping / the update).
        gc_flag, clip_grad: see ``src.optimizer.GradientPreprocess``.
        rank_size: > 1 averages the gradients over the data-parallel group.
        ema_decay: None, or the decay of an exponential moving average of all network parameters
            (kept as ``ema.<name>`` parameters, updated after each successful step).
    """

    def __init__(self, network, loss_fn, optimizer, loss_scale=1.0, gc_flag=False, clip_grad=0.0,
                 rank_size=1, ema_decay=None):
        super().__init__(auto_prefix=False)
        self.network = network
        self.net_with_loss = nn.WithLossCell(network, loss_fn)
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.scale = float(loss_scale) if loss_scale and float(loss_scale) > 0 else 1.0
        self.unscale = self.scale != 1.0
        self.inv_scale = ms.Tensor(1.0 / self.scale, ms.float32)
        self.hyper_map = ops.HyperMap()
        self.preprocess = GradientPreprocess(self.weights, gc_flag, clip_grad)
        self.use_reducer = int(rank_size) > 1
        self.reducer = nn.DistributedGradReducer(self.weights, True, int(rank_size)) if self.use_reducer else None
        self.use_ema = ema_decay is not None
        if self.use_ema:
            params = ms.ParameterTuple([p for p in network.get_parameters()])
            self.ema_sources = params
            self.ema_params = params.clone(prefix="ema", init="same")
            for p in self.ema_params:
                p.requires_grad = False
            self.ema_decay = ms.Tensor(float(ema_decay), ms.float32)

    def ema_update(self):
        decay = self.ema_decay
        for ema, param in zip(self.ema_params, self.ema_sources):
            ops.assign(ema, ema * ops.cast(decay, ema.dtype) + param * ops.cast(1.0 - decay, ema.dtype))
        return decay

    def construct(self, image, label):
        loss = self.net_with_loss(image, label)
        sens = ops.full_like(loss, self.scale)
        grads = self.grad(self.net_with_loss, self.weights)(image, label, sens)
        if self.use_reducer:
            grads = self.reducer(grads)
        grads = self.hyper_map(_cast_like, self.weights, grads)  # float32 master weights under O2 / O3
        if self.unscale:
            grads = self.hyper_map(F.partial(_grad_scale, self.inv_scale), grads)
        finite = grads_finite(grads)
        grads = self.preprocess(grads)
        if finite:
            loss = F.depend(loss, self.optimizer(grads))
            if self.use_ema:
                loss = F.depend(loss, self.ema_update())
        return loss, finite


def ema_swap(train_step):
    """Exchange the network weights with their EMA copies (call again to swap back)."""
    for ema, param in zip(train_step.ema_params, train_step.ema_sources):
        current = param.value().copy()
        param.set_data(ema.value().copy())
        ema.set_data(current)


# --------------------------------------------------------------------------------------- checkpoints
def checkpoint_dir(config):
    """Where checkpoints go: ``save_checkpoint_path`` (relative to output_path), else output_path."""
    out = str(cfg(config, "output_path", "") or ".")
    sub = str(cfg(config, "save_checkpoint_path", "") or "")
    if sub in ("", ".", "./"):
        return out
    return sub if os.path.isabs(sub) else os.path.join(out, sub)


def _load_train_state(train_step, path, logger):
    """Restore network, optimizer and EMA state; returns the checkpoint's metadata."""
    entries = ms.load_checkpoint(path)
    meta = {}
    for key in META_KEYS:
        if key in entries:
            value = entries.pop(key)
            meta[key] = value if isinstance(value, str) else value.asnumpy().item()
    entries = {k: v for k, v in entries.items() if not k.startswith("learning_rate")}
    own = {p.name: p for p in train_step.get_parameters() if not p.name.startswith("learning_rate")}
    has_ema = any(k.startswith("ema.") for k in entries)
    missing = sorted(k for k in own if k not in entries and not (k.startswith("ema.") and not has_ema))
    unexpected = sorted(k for k in entries if k not in own and not k.startswith("ema."))
    misshaped = sorted(f"{k} (checkpoint {tuple(entries[k].shape)}, model {tuple(own[k].shape)})"
                       for k in own if k in entries and tuple(entries[k].shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        parts = [f"{label}: {', '.join(items[:20])}" + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                 if items]
        raise ValueError(f"Cannot resume from {path}: it does not fit this model / optimizer; " + "; ".join(parts)
                         + ". (Resume needs the same backbone, class_num and opt.)")
    values = {k: v for k, v in entries.items() if k in own}
    not_loaded, _ = ms.load_param_into_net(train_step, values)
    not_loaded = [k for k in not_loaded if k in values]
    if not_loaded:
        raise ValueError(f"Cannot resume from {path}: could not restore {', '.join(not_loaded)}.")
    if train_step.use_ema and not has_ema:
        logger.warning("The resumed checkpoint has no EMA weights; the EMA starts from the current weights.")
        for ema, param in zip(train_step.ema_params, train_step.ema_sources):
            ema.set_data(param.value().copy())
    return meta


def _resolve_resume(config, ckpt_directory, prefix):
    value = str(cfg(config, "resume", "") or "").strip()
    if not value or value.lower() in ("0", "false", "none", "no"):
        return None
    if value.lower() == "auto":
        return find_latest_checkpoint(ckpt_directory, prefix)  # None: nothing to resume, start afresh
    if not os.path.isfile(value):
        raise FileNotFoundError(f"--resume: checkpoint file not found: {value}")
    return value


def average_batchnorm_statistics(net, rank_size):
    """Average BatchNorm moving statistics over the data-parallel group.

    Gradients are averaged every step, but each rank's moving mean / variance only see its own shard;
    averaging them (as timm's ``distribute_bn``) before evaluating and saving makes every rank hold the
    same model, so distributed evaluation equals single-process evaluation of the saved checkpoint.
    """
    if rank_size <= 1:
        return
    from src.eval_engine import AllReduceSum
    reduce = AllReduceSum()
    for name, param in net.parameters_and_names():
        if name.endswith(("moving_mean", "moving_variance")):
            param.set_data(reduce(param) / rank_size)


# --------------------------------------------------------------------------------------- training loop
def run_training(config):
    """Train ``config.backbone`` as configured; returns a summary dict. Raises TrainingDiverged."""
    from src.dataset import create_dataset

    rank_id, rank_size = init_env(config)
    output_path = str(cfg(config, "output_path", "") or ".")
    is_main = rank_id == 0
    logger = get_logger(output_path if is_main else None, rank_id, name="train")
    logger.info("standalone training" if rank_size == 1 else f"distributed training: rank {rank_id} of {rank_size}")
    if is_main:
        logger.save_args(config)

    train_ds, class_names = create_dataset(config, True, rank_id, rank_size)
    steps_per_epoch = train_ds.get_dataset_size()
    if steps_per_epoch <= 0:
        raise ValueError(f"The training set at {config.dataset_path} has fewer images than one batch "
                         f"(batch_size {config.batch_size}); lower batch_size.")
    eval_interval = int(cfg(config, "eval_interval", 1))
    eval_ds = create_dataset(config, False, rank_id, rank_size)[0] if eval_interval > 0 else None

    net = build_network(config)
    max_epoch = int(config.max_epoch)
    lrs = lr_from_config(config, steps_per_epoch)
    optimizer = build_optimizer(config, net.trainable_params(), lrs)
    ema_decay = float(cfg(config, "model_ema_decay", 0.9998)) if cfg(config, "model_ema", False) else None
    train_step = TrainStep(net, get_loss(config), optimizer, loss_scale=float(cfg(config, "loss_scale", 1.0)),
                           gc_flag=bool(cfg(config, "gc_flag", False)), clip_grad=float(cfg(config, "clip_grad", 0.0)),
                           rank_size=rank_size, ema_decay=ema_decay)
    train_step.set_train(True)

    ckpt_directory = checkpoint_dir(config)
    prefix = str(config.backbone)
    ckpt = CheckpointManager(ckpt_directory, prefix, int(cfg(config, "keep_checkpoint_max", 5)),
                             enabled=is_main and bool(cfg(config, "save_checkpoint", True)))

    start_epoch, best_acc = 0, -1.0
    resume_path = _resolve_resume(config, ckpt_directory, prefix)
    if resume_path:
        meta = _load_train_state(train_step, resume_path, logger)
        start_epoch = int(meta.get("epoch_num", 0))
        best_acc = float(meta.get("best_acc", -1.0))
        expected_step = start_epoch * steps_per_epoch
        step_now = int(optimizer.global_step.asnumpy().reshape(-1)[0])
        if step_now != expected_step:
            logger.warning(f"The checkpoint was taken at step {step_now}, but {start_epoch} epochs of "
                           f"{steps_per_epoch} steps make {expected_step}; continuing the schedule at {expected_step}.")
            optimizer.global_step.set_data(ms.Tensor(np.array([expected_step], np.int32)))
        ckpt.last_saved = resume_path
        if ckpt.enabled and not os.path.isfile(ckpt.best_path):
            best_acc = -1.0  # best.ckpt was lost (e.g. killed while writing it): the next evaluation rewrites it
        logger.info(f"resumed from {resume_path}: {start_epoch} epochs done, global step {expected_step}, "
                    f"best accuracy so far {best_acc:.6f}")
    elif str(cfg(config, "resume", "") or "").lower() == "auto":
        logger.info(f"resume: auto found no checkpoint in {ckpt_directory}; starting from scratch")

    eval_engine = EvalEngine(net, eval_ds, rank_size) if eval_ds is not None else None

    def evaluate():
        if train_step.use_ema:
            ema_swap(train_step)
        try:
            result = eval_engine.evaluate()
        finally:
            if train_step.use_ema:
                ema_swap(train_step)
            net.set_train(True)
        return result

    def meta_fn(epoch_num, global_step, best):
        return {"epoch_num": int(epoch_num), "step_num": int(global_step), "best_acc": float(best),
                "class_names": json.dumps(list(class_names)), "backbone": prefix}

    global_batch = int(config.batch_size) * rank_size
    monitor = StateMonitor(logger, steps_per_epoch, global_batch, lrs, max_epoch, eval_interval,
                           int(cfg(config, "eval_offset", -1)), eval_fn=evaluate if eval_engine else None,
                           ckpt=ckpt, save_checkpoint_epochs=int(cfg(config, "save_checkpoint_epochs", 1)),
                           best_acc=best_acc)

    if start_epoch >= max_epoch:
        logger.info(f"nothing to do: {start_epoch} of max_epoch {max_epoch} epochs are already done")
        return {"best_acc": best_acc, "history": [], "epochs_run": 0}

    profiler = None
    if cfg(config, "open_profiler", False):
        from mindspore import Profiler
        profiler = Profiler(output_path=os.path.join(output_path, f"profiler_{rank_id}"))

    # compile before the first epoch so that epoch times measure training
    t0 = time.time()
    shapes, types = train_ds.output_shapes(), train_ds.output_types()
    train_step.compile(ms.Tensor(np.zeros(shapes[0], types[0])), ms.Tensor(np.zeros(shapes[1], types[1])))
    if eval_engine is not None:
        eval_engine.compile()
        net.set_train(True)
    logger.info(f"compile time used={time.time() - t0:.2f}s")

    log_interval = int(cfg(config, "log_interval", 0) or 0)
    # float32: a non-finite gradient means divergence; float16 (O1-O3): an overflow may be a one-off
    max_bad = 1 if str(cfg(config, "amp_level", "O0")).upper() == "O0" else MAX_BAD_GRAD_STEPS
    iterator = train_ds.create_tuple_iterator(columns=["image", "label"], num_epochs=max_epoch - start_epoch)
    global_step = start_epoch * steps_per_epoch
    train_start = time.time()
    bad_grad_steps = 0

    def diverged(what, epoch, step):
        message = _diverged_message(what, epoch, step, ckpt)
        logger.error(message)
        return TrainingDiverged(message)

    for epoch in range(start_epoch, max_epoch):
        net.set_train(True)
        epoch_start = time.time()
        loss_sum, loss_count = 0.0, 0
        for step, (image, label) in enumerate(iterator, start=1):
            loss, finite = train_step(image, label)
            loss_value = float(loss.asnumpy())
            global_step += 1
            if not np.isfinite(loss_value):
                raise diverged("loss became NaN" if np.isnan(loss_value) else "loss became Inf", epoch, step)
            if not bool(finite.asnumpy()):
                bad_grad_steps += 1
                if bad_grad_steps >= max_bad:
                    what = "gradients became NaN/Inf" if max_bad == 1 else \
                        f"gradients were NaN/Inf for {bad_grad_steps} steps in a row"
                    raise diverged(f"{what} (loss={loss_value:.6g})", epoch, step)
                logger.warning(f"epoch[{epoch}] step[{step}]: gradients are not finite; the update was skipped")
            else:
                bad_grad_steps = 0
            loss_sum += loss_value
            loss_count += 1
            if log_interval > 0 and step % log_interval == 0:
                logger.info(f"epoch[{epoch}], step_num[{step}/{steps_per_epoch}], loss={loss_value:.6f}")
        epoch_seconds = time.time() - epoch_start
        average_batchnorm_statistics(net, rank_size)
        monitor.epoch_end(epoch, epoch_seconds, loss_sum / max(loss_count, 1), global_step,
                          train_cell=train_step, meta_fn=meta_fn)

    logger.info(f"training time used={time.time() - train_start:.2f}s")
    logger.info(f"last_metric[{monitor.best_acc}]")
    logger.info(f"mean_fps[{monitor.mean_fps:.2f}]")
    if ckpt.enabled and os.path.isfile(ckpt.best_path):
        logger.info(f"best checkpoint: {ckpt.best_path}")
    if profiler is not None:
        profiler.analyse()
    return {"best_acc": monitor.best_acc, "history": monitor.history, "epochs_run": max_epoch - start_epoch,
            "best_path": ckpt.best_path if ckpt.enabled else None}


def _diverged_message(what, epoch, step, ckpt):
    """``step`` counts from 1 within the 0-based ``epoch`` (as ``epoch[E], step_num[S/N]`` lines)."""
    last = ckpt.last_saved if ckpt.last_saved and os.path.isfile(ckpt.last_saved) else None
    where = f"Last good checkpoint: {last}" if last else "No checkpoint had been saved yet."
    return f"{what} at epoch {epoch} step {step}; stopping. {where}"
