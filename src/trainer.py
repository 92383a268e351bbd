"""Training through MindSpore's own loop: ``mindspore.train.Model`` with ``Callback``s.

    >>> from src.trainer import run_training
    >>> summary = run_training(config, callbacks=[MyCallback()])

How a run flows: ``init_env`` (mode, device, communication group) -> rank 0 owns the output and checkpoint
folders (``src.locks.claim_folders``: a second run into them stops before writing anything) ->
``src.dataset.create_dataset`` ->
``src.builder.build_network(config, "train")`` -> ``src.train_step.build_train_step`` (one optimizer step
of the recipe as a cell) -> ``Model(train_step).train(...)`` with the callbacks of ``src.callback``
(statistics and divergence at log points, BatchNorm averaging over ranks, evaluation with EMA weights,
the epoch line, checkpoints, profiler) followed by the user's callbacks.

Dataset sink mode (``dataset_sink_mode``, ``sink_size``) is used on GPU and Ascend; on CPU MindSpore
feeds one batch per step (logged once). The host reads the loss only at log points.

Stops: ``TrainingDiverged`` (exit code 3 in train.py), ``CheckpointSaveError`` (1), ``TrainingInterrupted``
(SIGINT 130 / SIGTERM 143); each leaves every checkpoint saved before it intact.
"""
import errno
import math
import os
import signal
import sys

import mindspore as ms
import numpy as np
from mindspore.train import Callback, Model

from models.checkpoint import EMA_PREFIX, mismatch_report, read_checkpoint
from src.builder import build_network
from src.callback import (PARTIAL_MARK, BatchNormSync, CheckpointManager, CheckpointSaver, CheckpointSaveError,
                          EpochSummary, EvalCallback, ProfilerCallback, TrainingDiverged, TrainMonitor,
                          checkpoint_is_readable, ema_pairs, find_latest_checkpoint, meta_entries)
from src.checkpoint_settings import eval_settings
from src.eval_engine import EvalEngine
from src.logging import get_logger
from src.locks import claim_folders
from src.lr_generator import lr_from_config
from src.train_step import build_train_step

__all__ = ["TrainingDiverged", "CheckpointSaveError", "TrainingInterrupted", "resolve_distributed", "init_env",
           "build_train_step", "checkpoint_dir", "check_output_folder", "load_train_state", "run_training"]

#: non-finite gradient steps in a row that count as divergence, by loss scaling
_MAX_BAD_STEPS = {"O0": 1, "fixed": 5, "dynamic": 40}


class TrainingInterrupted(RuntimeError):
    """SIGINT / SIGTERM: the run stopped at once; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


# --------------------------------------------------------------------------------------- environment
def resolve_distributed(config):
    """Whether this process trains data-parallel: ``run_distribute`` against how the process was started.

    ``auto``: exactly when a launcher (msrun, mpirun, a rank table) started it. ``true`` without a launcher is
    a one-sentence ValueError (a lone process cannot form a communication group; on Ascend MindSpore would
    stop with "RANK_ID has not been exported"); ``false`` under a launcher of several processes trains each
    one alone, with a warning.
    """
    from src.model_utils.device_adapter import get_device_num, get_launcher

    launcher = get_launcher()
    value = config.run_distribute
    if value == "auto":
        return launcher is not None
    if value and launcher is None:
        where = "on the command line" if "run_distribute" in config.command_line_keys else \
            f"in {config.config_path or 'the config'}"
        raise ValueError(f"run_distribute is true ({where}) but this process was not started by a launcher "
                         "(msrun, mpirun or a rank table): start it with scripts/run_distribute_train_*.sh, or set "
                         "--run_distribute auto (the default) to train on one device.")
    if not value and launcher is not None and get_device_num() > 1:
        print(f"WARNING: run_distribute is false but {launcher} started {get_device_num()} processes: each one "
              "trains alone on its own device.", file=sys.stderr, flush=True)
    return bool(value)


def init_env(config):
    """Execution mode, device, seed and (when ``resolve_distributed``) the communication group.

    Returns ``(rank_id, rank_size)``; everything else asks this function's result, never the
    environment, so a single place decides who is rank 0.
    """
    distributed = resolve_distributed(config)
    ms.set_context(mode=ms.GRAPH_MODE if config.context_mode == "graph" else ms.PYNATIVE_MODE)
    target = str(config.device_target)
    if target == "CPU":
        ms.set_device("CPU")
    else:
        if distributed:  # the launcher's DEVICE_ID / local rank
            from src.model_utils.device_adapter import get_device_id
            device_id = get_device_id()
        else:
            device_id = int(config.device_id)
        ms.set_device(target, device_id)
    ms.set_seed(int(config.seed))
    rank_id, rank_size = 0, 1
    if distributed:
        from mindspore.communication import get_group_size, get_rank, init
        init()
        rank_id, rank_size = get_rank(), get_group_size()
        if "device_num" in config.explicit_keys and int(config.device_num) != rank_size:
            print(f"WARNING: device_num is {config.device_num} in the config but the job has {rank_size} processes; "
                  f"using {rank_size}", file=sys.stderr, flush=True)
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=rank_size)
    return rank_id, rank_size


# --------------------------------------------------------------------------------------- folders
def checkpoint_dir(config):
    """Where checkpoints go: ``save_checkpoint_path`` (relative to output_path), else output_path."""
    out = str(config.output_path or ".")
    sub = str(config.save_checkpoint_path or "")
    if sub in ("", ".", "./"):
        return out
    return sub if os.path.isabs(sub) else os.path.join(out, sub)


def check_output_folder(folder, what, needed_bytes=0):
    """Create ``folder`` and prove it can take a file of ``needed_bytes``; one-sentence ValueError otherwise."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"the {what} {folder} is a file, not a folder: remove it or choose another {what}.")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the {what} {folder} ({err.strerror or err}).") from None
    probe = os.path.join(folder, f".write-test{PARTIAL_MARK}{os.getpid()}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            if needed_bytes:
                try:
                    os.posix_fallocate(fd, 0, int(needed_bytes))
                except OSError as err:
                    if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    free = os.statvfs(folder)
                    if free.f_bavail * free.f_frsize < needed_bytes:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        finally:
            os.close(fd)
    except OSError as err:
        size = f" (a checkpoint needs {needed_bytes / 2**20:.0f} MiB)" if err.errno in (errno.ENOSPC, errno.EFBIG,
                                                                                           errno.EDQUOT) else ""
        raise ValueError(f"the {what} {folder} cannot be written: {err.strerror or err}{size}.") from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def _state_bytes(train_step):
    """Bytes of the parameters a training checkpoint holds, plus a margin for its metadata."""
    total = sum(p.size * np.dtype(ms.dtype_to_nptype(p.dtype)).itemsize for p in train_step.checkpoint_parameters())
    return int(total * 1.02) + (1 << 20)


# --------------------------------------------------------------------------------------- resume
def load_train_state(train_step, path, backbone):
    """Restore network, optimizer, EMA, loss scale and counters from ``path``; returns its metadata.

    Raises ValueError with one sentence when the file does not fit (another backbone: both are named).
    """
    contents = read_checkpoint(path)
    entries = dict(contents.weights)
    entries.update({EMA_PREFIX + k: v for k, v in contents.ema.items()})
    entries.update(contents.state)
    entries = {k: v for k, v in entries.items() if not k.startswith("learning_rate")}
    own = {p.name: p for p in train_step.checkpoint_parameters()}
    optional = [k for k in own if k.startswith("train_state.")]  # per-epoch counters, reset anyway
    if not contents.ema:
        optional += [k for k in own if k.startswith(EMA_PREFIX)]
    expected = {k: tuple(p.shape) for k, p in own.items() if k not in optional or k in entries}
    report = mismatch_report(expected, {k: tuple(v.shape) for k, v in entries.items()})
    saved_backbone = contents.meta.get("backbone")
    if report:
        if saved_backbone and saved_backbone != backbone:
            raise ValueError(f"cannot resume from {path}: it holds a {saved_backbone} run but the backbone is "
                             f"{backbone}; set backbone to {saved_backbone} or start a new output folder.")
        raise ValueError(f"cannot resume from {path}: it does not fit this model / optimizer ({report}); "
                         "resuming needs the same backbone, class_num, opt and model_ema.")
    not_loaded, _ = ms.load_param_into_net(train_step, {k: v for k, v in entries.items() if k in own})
    not_loaded = [k for k in not_loaded if k in entries]
    if not_loaded:
        raise ValueError(f"cannot resume from {path}: could not restore {', '.join(not_loaded)}.")
    if not contents.ema:
        for p in train_step.checkpoint_parameters():
            if p.name.startswith(EMA_PREFIX) and p.name[len(EMA_PREFIX):] in own:
                p.set_data(own[p.name[len(EMA_PREFIX):]].value().copy())
    return contents.meta


def _resolve_resume(config, directory, prefix, logger):
    """The checkpoint to resume from, or None (a fresh start)."""
    value = str(config.resume or "").strip()
    if not value or value.lower() in ("0", "false", "none", "no"):
        return None
    if value.lower() != "auto":
        if not os.path.isfile(value):
            raise FileNotFoundError(f"--resume: checkpoint file not found: {value}")
        return value
    newest = find_latest_checkpoint(directory, prefix)
    path = find_latest_checkpoint(directory, prefix, readable=checkpoint_is_readable)
    if newest and path != newest:
        logger.warning(f"resume: the newest checkpoint {newest} cannot be read; "
                       + (f"resuming from {path}, the newest readable one" if path else "none can be read"))
    if path is None:
        logger.info(f"resume: auto found no checkpoint in {directory}; starting from scratch")
    return path


# --------------------------------------------------------------------------------------- sink epochs
class _SinkEpochs(Callback):
    """Presents ``Model`` epochs of ``sink_size`` steps to ``callbacks`` as the data's epochs.

    With ``sink_size`` smaller than an epoch, ``Model.train`` counts one epoch per sink; this wrapper calls
    the callbacks' epoch hooks at the real epoch boundaries, with ``cur_epoch_num`` and ``batch_num`` of
    real epochs, so every callback (ours and the user's) sees the same epochs whatever the sink size.
    """

    def __init__(self, callbacks, sinks_per_epoch, steps_per_epoch):
        super().__init__()
        self.callbacks = list(callbacks)
        self.sinks = int(sinks_per_epoch)
        self.steps = int(steps_per_epoch)

    def _call(self, hook, run_context):
        cb_params = run_context.original_args()
        model_epoch, model_batches = cb_params.cur_epoch_num, cb_params.batch_num
        cb_params.cur_epoch_num = (model_epoch - 1) // self.sinks + 1
        cb_params.batch_num = self.steps
        try:
            for callback in self.callbacks:
                getattr(callback, hook)(run_context)
        finally:
            cb_params.cur_epoch_num, cb_params.batch_num = model_epoch, model_batches

    def on_train_begin(self, run_context):
        self._call("on_train_begin", run_context)

    def on_train_end(self, run_context):
        self._call("on_train_end", run_context)

    def on_train_step_begin(self, run_context):
        self._call("on_train_step_begin", run_context)

    def on_train_step_end(self, run_context):
        self._call("on_train_step_end", run_context)

    def on_train_epoch_begin(self, run_context):
        if (run_context.original_args().cur_epoch_num - 1) % self.sinks == 0:
            self._call("on_train_epoch_begin", run_context)

    def on_train_epoch_end(self, run_context):
        if run_context.original_args().cur_epoch_num % self.sinks == 0:
            self._call("on_train_epoch_end", run_context)


# --------------------------------------------------------------------------------------- training
def _loss_scaling(config):
    if str(config.amp_level).upper() == "O0":
        return "O0"
    return str(config.loss_scale_type)


def _sink_plan(config, steps_per_epoch, logger):
    """(sink mode on?, Model epochs per data epoch, sink_size for Model.train)."""
    if not config.dataset_sink_mode:
        return False, 1, -1
    if str(config.device_target) == "CPU":
        logger.info("dataset sink mode is not available on CPU: MindSpore feeds one batch per step")
        return False, 1, -1
    sink = int(config.sink_size)
    if sink <= 0 or sink >= steps_per_epoch:
        return True, 1, -1
    if steps_per_epoch % sink:
        raise ValueError(f"sink_size {sink} does not divide the {steps_per_epoch} steps of an epoch; "
                         f"use a divisor of {steps_per_epoch} or -1 (one sink per epoch).")
    return True, steps_per_epoch // sink, sink


def _install_signal_handlers(progress):
    """SIGINT / SIGTERM raise TrainingInterrupted in the main thread; returns the previous handlers."""
    def handler(signum, _frame):
        raise TrainingInterrupted(f"interrupted at epoch {progress.get('epoch', 0)} step {progress.get('step', 0)}; "
                                  "resume with --resume auto", signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def run_training(config, callbacks=None):
    """Train ``config.backbone`` as configured; returns a summary dict.

    ``callbacks``: extra ``mindspore.train.Callback`` objects, called after this project's (they see
    ``cb_params.eval_result`` and ``cb_params.epoch_loss`` at epoch ends). Raises TrainingDiverged,
    CheckpointSaveError, TrainingInterrupted, ValueError (a configuration or data mistake).
    """
    extra = list(callbacks or [])
    for callback in extra:
        if not isinstance(callback, Callback):
            raise ValueError(f"callbacks must be mindspore.train.Callback objects, got {type(callback).__name__}")
    rank_id, rank_size = init_env(config)
    with claim_folders(_owned_folders(config, rank_id)) as takeovers:
        return _train(config, extra, rank_id, rank_size, takeovers)


def _owned_folders(config, rank_id):
    """The folders a run owns while it trains, as (folder, what, config key) (created and checked writable).

    Rank 0 owns them for the whole data-parallel job: the other ranks write only under rank 0's folders
    (``rank<R>/`` with save_all_ranks), so they share them.
    """
    if rank_id != 0:
        return []
    folders = [(str(config.output_path or "."), "output folder", "output_path")]
    if config.save_checkpoint:
        folders.append((checkpoint_dir(config), "checkpoint folder", "save_checkpoint_path"))
    for folder, what, _ in folders:
        check_output_folder(folder, what)
    return folders


def _train(config, extra, rank_id, rank_size, takeovers):
    """``run_training`` once the run owns its folders; ``takeovers``: lines about locks of dead runs."""
    from src.dataset import create_dataset

    output_path = str(config.output_path or ".")
    is_main = rank_id == 0
    logger = get_logger(output_path if is_main else None, rank_id, name="train")
    for line in takeovers:
        logger.warning(line)
    logger.info("standalone training" if rank_size == 1 else f"distributed training: rank {rank_id} of {rank_size}")
    if is_main:
        logger.save_args(config)

    train_ds, class_names = create_dataset(config, True, rank_id, rank_size)
    steps_per_epoch = train_ds.get_dataset_size()
    eval_ds = create_dataset(config, False, rank_id, rank_size)[0] if config.eval_interval > 0 else None

    net, _ = build_network(config, "train", log=logger.warning)
    lrs = lr_from_config(config, steps_per_epoch)
    train_step = build_train_step(config, net, learning_rate=lrs, rank_size=rank_size)
    prefix = str(config.backbone)
    directory = checkpoint_dir(config)
    saving = bool(config.save_checkpoint) and (is_main or config.save_all_ranks)
    if config.save_all_ranks and rank_size > 1:
        directory = os.path.join(directory, f"rank{rank_id}")
    if saving:
        check_output_folder(directory, "checkpoint folder", _state_bytes(train_step))
    manager = CheckpointManager(directory, prefix, config.keep_checkpoint_max, enabled=saving)

    start_epoch, best_acc = 0, -1.0
    resume_path = _resolve_resume(config, directory, prefix, logger)
    if resume_path:
        meta = load_train_state(train_step, resume_path, prefix)
        start_epoch = int(meta.get("epoch_num", 0))
        best_acc = float(meta.get("best_acc", -1.0))
        expected_step = start_epoch * steps_per_epoch
        global_step = train_step.optimizer.global_step
        if int(global_step.asnumpy().reshape(-1)[0]) != expected_step:
            logger.warning(f"the checkpoint's optimizer step differs from {start_epoch} epochs of {steps_per_epoch} "
                           f"steps; continuing the schedule at step {expected_step}")
            global_step.set_data(ms.Tensor(np.array([expected_step], np.int32)))
        manager.last_saved = resume_path
        if saving and not os.path.isfile(manager.best_path):
            best_acc = -1.0  # best.ckpt was lost: the next evaluation writes it again
        logger.info(f"resumed from {resume_path}: {start_epoch} epochs done, global step {expected_step}, "
                    f"best accuracy so far {best_acc:.6f}")
    max_epoch = int(config.max_epoch)
    if start_epoch >= max_epoch:
        logger.info(f"nothing to do: {start_epoch} of max_epoch {max_epoch} epochs are already done")
        return {"best_acc": best_acc, "history": [], "epochs_run": 0, "best_path": None}

    progress = {"epoch": start_epoch, "step": 0}
    max_bad = _MAX_BAD_STEPS[_loss_scaling(config)]
    ours = [TrainMonitor(train_step, logger, config.log_interval, max_bad, progress, manager)]
    if rank_size > 1:
        ours.append(BatchNormSync(net, rank_size))
    if eval_ds is not None:
        engine = EvalEngine(net, eval_ds, rank_size)
        ours.append(EvalCallback(engine, net, train_step, max_epoch, config.eval_interval, config.eval_offset))
    summary = EpochSummary(logger, lrs, int(config.batch_size) * rank_size, best_acc)
    ours.append(summary)
    evaluation = eval_settings(config, evaluated_ema=bool(ema_pairs(train_step, net)))
    ours.append(CheckpointSaver(manager, train_step, max_epoch, config.save_checkpoint_epochs,
                                lambda epoch, step, best: meta_entries(epoch, step, best, class_names, prefix,
                                                                       evaluation),
                                best_acc, evaluates=eval_ds is not None))
    if config.open_profiler:
        ours.append(ProfilerCallback(os.path.join(output_path, f"profiler_{rank_id}")))

    sink, sinks_per_epoch, sink_size = _sink_plan(config, steps_per_epoch, logger)
    all_callbacks = ours + extra
    if sinks_per_epoch > 1:
        all_callbacks = [_SinkEpochs(all_callbacks, sinks_per_epoch, steps_per_epoch)]
    model = Model(train_step)
    previous = _install_signal_handlers(progress)
    try:
        model.train(max_epoch * sinks_per_epoch, train_ds, callbacks=all_callbacks, dataset_sink_mode=sink,
                    sink_size=sink_size, initial_epoch=start_epoch * sinks_per_epoch)
    except TrainingInterrupted as err:
        logger.error(str(err))
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if manager.enabled and os.path.isfile(manager.best_path):
        logger.info(f"best checkpoint: {manager.best_path}")
    return {"best_acc": summary.best_acc, "history": summary.history, "epochs_run": max_epoch - start_epoch,
            "best_path": manager.best_path if manager.enabled else None,
            "steps_per_epoch": steps_per_epoch, "lr_last": float(lrs[-1]) if math.isfinite(lrs[-1]) else None}
