"""The training loop's work as ``mindspore.train.Callback`` objects (``Model.train`` calls them).

``src.trainer.run_training`` passes, in this order (user callbacks come after them):

==================  ==================================================================================
``TrainMonitor``     at log points (every ``log_interval`` steps, the epoch end) reads the train step's
                     device-side statistics (one host sync), logs ``epoch[E], step_num[S/N], loss=...``,
                     and raises ``TrainingDiverged`` when the loss or the gradients stopped being finite;
                     puts the epoch's mean loss and time into ``cb_params``
``BatchNormSync``    averages BatchNorm moving statistics over the data-parallel ranks at the epoch end
``EvalCallback``     evaluates on the scheduled epochs with the EMA weights swapped in; puts the result
                     into ``cb_params.eval_result``
``EpochSummary``     the epoch line of the original port, the run's closing lines
``CheckpointSaver``  ``<backbone>-<epoch>_<steps>.ckpt`` every ``save_checkpoint_epochs`` (newest
                     ``keep_checkpoint_max`` kept) and ``best.ckpt``; atomic; metadata included
``ProfilerCallback`` MindSpore's profiler around the run (``open_profiler``)
==================  ==================================================================================

The epoch line keeps the format of the original MindSpore port::

    epoch[3], epoch time: 12.34s, per step time: 0.0812s, loss=1.234567, lr=0.000550, fps=98.52, accuracy=0.912000, eval_cost=1.23

(``accuracy`` / ``eval_cost`` only on evaluation epochs; epochs are numbered from 0 in the log).
"""
import errno
import glob
import json
import os
import re
import shutil
import time

import mindspore as ms
from mindspore.train import Callback

from models.checkpoint import read_checkpoint_meta

__all__ = ["TrainingDiverged", "CheckpointSaveError", "is_eval_epoch", "format_epoch_line", "TrainMonitor",
           "BatchNormSync", "EvalCallback", "EpochSummary", "CheckpointManager", "CheckpointSaver",
           "ProfilerCallback", "find_latest_checkpoint", "read_checkpoint_meta", "PARTIAL_MARK"]

#: part of the name of every temporary file of a save (``.NAME.partial-PID.ckpt`` and MindSpore's own
#: ``.NAME.partial-PID.tmp``); a start-up removes those an interrupted run left behind
PARTIAL_MARK = ".partial-"


class TrainingDiverged(RuntimeError):
    """The loss (or the gradients) stopped being finite."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (disk full, folder gone, ...); the previous ones are intact."""


def is_eval_epoch(epoch, max_epoch, eval_interval, eval_offset):
    """Whether the 0-based ``epoch`` is evaluated.

    Every ``eval_interval`` epochs, at the epochs numbered (from 1) ``eval_offset``,
    ``eval_offset + eval_interval``, ...; a negative ``eval_offset`` means ``max_epoch % eval_interval``
    (the schedule then always includes the last epoch, as in the original port). The last epoch is
    always evaluated; ``eval_interval <= 0`` disables evaluation.
    """
    interval = int(eval_interval)
    if interval <= 0:
        return False
    if epoch == max_epoch - 1:
        return True
    offset = int(eval_offset)
    if offset < 0:
        offset = max_epoch % interval
    number = epoch + 1
    if offset >= interval:
        return number >= offset and (number - offset) % interval == 0
    return number % interval == offset


def format_epoch_line(epoch, epoch_seconds, steps, loss, lr, fps, accuracy=None, eval_cost=None):
    line = (f"epoch[{epoch}], epoch time: {epoch_seconds:.2f}s, per step time: {epoch_seconds / max(steps, 1):.4f}s, "
            f"loss={loss:.6f}, lr={lr:.6f}, fps={fps:.2f}")
    if accuracy is not None:
        line += f", accuracy={accuracy:.6f}, eval_cost={eval_cost:.2f}"
    return line


def _step_in_epoch(cb_params):
    return int((cb_params.cur_step_num - 1) % cb_params.batch_num + 1)


class TrainMonitor(Callback):
    """Reads the train step's statistics at log points; raises ``TrainingDiverged``; logs step lines.

    Args:
        train_step: the cell of ``src.train_step.build_train_step`` (``read_stats()`` / ``reset_stats()``).
        logger: the run's logger.
        log_interval: steps between step lines (0: only at the epoch end).
        max_bad_steps: non-finite gradient steps in a row that count as divergence (1 in float32; several
            under mixed precision, where a fixed loss scale may overflow once).
        progress: a dict this callback keeps up to date with ``epoch`` / ``step`` (for the interrupt message).
        checkpoints: the ``CheckpointManager`` whose last good file the divergence message names.
    """

    def __init__(self, train_step, logger, log_interval=0, max_bad_steps=1, progress=None, checkpoints=None):
        super().__init__()
        self.train_step = train_step
        self.logger = logger
        self.log_interval = int(log_interval)
        self.max_bad_steps = int(max_bad_steps)
        self.progress = progress if progress is not None else {}
        self.checkpoints = checkpoints
        self._epoch_start = 0.0
        self._logged_step = 0

    def on_train_epoch_begin(self, run_context):
        cb_params = run_context.original_args()
        self.train_step.reset_stats()
        self._epoch_start = time.time()
        self._logged_step = 0
        self.progress.update(epoch=cb_params.cur_epoch_num - 1, step=0)

    def on_train_step_end(self, run_context):
        cb_params = run_context.original_args()
        step = _step_in_epoch(cb_params)
        self.progress.update(step=step)
        if self.log_interval > 0 and step // self.log_interval > self._logged_step // self.log_interval:
            self._logged_step = step
            self._checked(cb_params, step)
            self.logger.info(f"epoch[{cb_params.cur_epoch_num - 1}], step_num[{step}/{cb_params.batch_num}], "
                             f"loss={_last_loss(cb_params):.6f}")

    def on_train_epoch_end(self, run_context):
        cb_params = run_context.original_args()
        stats = self._checked(cb_params, cb_params.batch_num)
        cb_params.eval_result = None  # EvalCallback fills it on evaluation epochs
        cb_params.epoch_seconds = time.time() - self._epoch_start
        cb_params.epoch_loss = float(stats["loss_sum"] / max(stats["loss_count"], 1))

    def _checked(self, cb_params, step):
        """The statistics since the epoch began; raises TrainingDiverged when they show divergence."""
        stats = self.train_step.read_stats()
        if stats["worst_streak"] >= self.max_bad_steps:
            first = int(stats["first_bad_step"])
            if first >= 0:  # the optimizer step of the first bad one -> its place in the epoch
                step = first % cb_params.batch_num + 1
            loss = _last_loss(cb_params)
            if loss != loss:
                what = "loss became NaN"
            elif abs(loss) == float("inf"):
                what = "loss became Inf"
            elif self.max_bad_steps > 1:
                what = f"gradients were NaN/Inf for {int(stats['worst_streak'])} steps in a row (loss={loss:.6g})"
            else:
                what = f"gradients became NaN/Inf (loss={loss:.6g})"
            last = self.checkpoints.last_saved if self.checkpoints is not None else None
            last = last if last and os.path.isfile(last) else None
            where = f"Last good checkpoint: {last}" if last else "No checkpoint had been saved yet."
            message = f"{what} at epoch {cb_params.cur_epoch_num - 1} step {step}; stopping. {where}"
            self.logger.error(message)
            raise TrainingDiverged(message)
        if stats["bad_streak"] > 0:
            self.logger.warning(f"epoch[{cb_params.cur_epoch_num - 1}]: {int(stats['bad_streak'])} step(s) with "
                                "non-finite gradients were skipped")
        return stats


def _last_loss(cb_params):
    """The loss of the latest step (the first output of the train step), read from the device."""
    outputs = cb_params.net_outputs
    loss = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    return float(loss.asnumpy())


class BatchNormSync(Callback):
    """Averages BatchNorm moving statistics over the data-parallel group at every epoch end.

    Gradients are averaged every step, but each rank's moving mean / variance only see its own shard;
    averaging them (as timm's ``distribute_bn``) before evaluating and saving makes every rank hold the
    same model, so distributed evaluation equals single-process evaluation of the saved checkpoint.
    """

    def __init__(self, network, rank_size):
        super().__init__()
        from src.eval_engine import AllReduceSum

        self.rank_size = int(rank_size)
        self.stats = [p for p in network.get_parameters() if p.name.endswith(("moving_mean", "moving_variance"))]
        self.reduce = AllReduceSum()

    def on_train_epoch_end(self, run_context):
        for param in self.stats:
            param.set_data(self.reduce(param) / self.rank_size)


class EvalCallback(Callback):
    """Evaluates at the epochs ``is_eval_epoch`` selects, with the EMA weights swapped in when there are any.

    Puts ``{"top1", "top5", "count", "eval_cost"}`` (or None on other epochs) into ``cb_params.eval_result``.
    """

    def __init__(self, engine, network, train_step, max_epoch, eval_interval, eval_offset):
        super().__init__()
        self.engine = engine
        self.network = network
        self.ema_pairs = ema_pairs(train_step, network)
        self.max_epoch = int(max_epoch)
        self.eval_interval = int(eval_interval)
        self.eval_offset = int(eval_offset)

    def on_train_epoch_end(self, run_context):
        cb_params = run_context.original_args()
        epoch = cb_params.cur_epoch_num - 1
        cb_params.eval_result = None
        if not is_eval_epoch(epoch, self.max_epoch, self.eval_interval, self.eval_offset):
            return
        swap_weights(self.ema_pairs)
        try:
            cb_params.eval_result = self.engine.evaluate()
        finally:
            swap_weights(self.ema_pairs)
            self.network.set_train(True)


def ema_pairs(train_step, network):
    """[(network parameter, its EMA copy)] of a train step that keeps ``ema.<name>`` copies ([] without EMA)."""
    own = {p.name: p for p in train_step.get_parameters()}
    return [(p, own["ema." + p.name]) for p in network.get_parameters() if "ema." + p.name in own]


def swap_weights(pairs):
    """Exchange the values of each (a, b) pair (call again to swap back)."""
    for a, b in pairs:
        current = a.value().copy()
        a.set_data(b.value().copy())
        b.set_data(current)


class EpochSummary(Callback):
    """The original port's epoch line and closing lines (``training time used``, ``last_metric``, ``mean_fps``).

    Args:
        logger: the run's logger.
        lrs: the per-step learning-rate array (the logged lr is that of the epoch's last step).
        global_batch: images per step over all ranks (for fps).
        best_acc: the best accuracy so far (a resumed run's).
    """

    def __init__(self, logger, lrs, global_batch, best_acc=-1.0):
        super().__init__()
        self.logger = logger
        self.lrs = lrs
        self.global_batch = int(global_batch)
        self.best_acc = float(best_acc)
        self.history = []
        self._start = 0.0

    @property
    def mean_fps(self):
        return sum(r["fps"] for r in self.history) / len(self.history) if self.history else 0.0

    def on_train_begin(self, run_context):
        self._start = time.time()

    def on_train_epoch_end(self, run_context):
        cb_params = run_context.original_args()
        epoch, steps = cb_params.cur_epoch_num - 1, cb_params.batch_num
        seconds = cb_params.epoch_seconds
        global_step = cb_params.cur_epoch_num * steps
        lr = float(self.lrs[min(global_step, len(self.lrs)) - 1]) if len(self.lrs) else 0.0
        fps = self.global_batch * steps / max(seconds, 1e-9)
        result = cb_params.get("eval_result")
        self.logger.info(format_epoch_line(epoch, seconds, steps, cb_params.epoch_loss, lr, fps,
                                           None if result is None else result["top1"],
                                           None if result is None else result["eval_cost"]))
        record = {"epoch": epoch, "epoch_time": seconds, "loss": cb_params.epoch_loss, "lr": lr, "fps": fps}
        if result is not None:
            self.logger.info(f"top5_accuracy={result['top5']:.6f} (epoch {epoch}, {result['count']} images)")
            record.update(accuracy=result["top1"], top5=result["top5"])
            self.best_acc = max(self.best_acc, result["top1"])
        self.history.append(record)

    def on_train_end(self, run_context):
        self.logger.info(f"training time used={time.time() - self._start:.2f}s")
        self.logger.info(f"last_metric[{self.best_acc}]")
        self.logger.info(f"mean_fps[{self.mean_fps:.2f}]")


# ------------------------------------------------------------------------------------------- checkpoints
def _saved_names(train_cell):
    """What a training checkpoint holds: the cell's ``checkpoint_parameters()`` (network, optimizer state,
    EMA, loss scale, counters; not the learning-rate table nor a frozen teacher)."""
    return {p.name for p in train_cell.checkpoint_parameters()}


class CheckpointManager:
    """Writes ``{prefix}-{epoch}_{steps}.ckpt`` files, keeps the newest ``keep_max``, plus ``best.ckpt``.

    Every write is atomic: the file is written under a temporary name (``.NAME.partial-PID.ckpt``;
    MindSpore itself first writes ``.NAME.partial-PID.tmp``) and moved into place, so a crash, a kill or a
    full disk never leaves a torn checkpoint, and a failed write never removes an older one. Creating a
    manager removes the temporary files an interrupted run left behind. Only an enabled manager (rank 0
    with save_checkpoint on) writes anything.
    """

    def __init__(self, directory, prefix, keep_max=5, enabled=True):
        self.directory = directory
        self.prefix = prefix
        self.keep_max = max(1, int(keep_max))
        self.enabled = bool(enabled)
        self.last_saved = None
        self.best_path = os.path.join(directory, "best.ckpt")
        self._pattern = re.compile(r"^" + re.escape(prefix) + r"-(\d+)_(\d+)\.ckpt$")
        if self.enabled:
            os.makedirs(directory, exist_ok=True)
            for stale in glob.glob(os.path.join(glob.escape(directory), f".*{PARTIAL_MARK}*")):
                try:
                    os.remove(stale)
                except OSError:
                    pass

    def epoch_files(self):
        """This run's epoch checkpoints in the directory, oldest first."""
        found = []
        for name in os.listdir(self.directory) if os.path.isdir(self.directory) else []:
            match = self._pattern.match(name)
            if match:
                found.append((int(match.group(1)), name))
        return [os.path.join(self.directory, n) for _, n in sorted(found)]

    def _temporary(self, path):
        return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}{PARTIAL_MARK}{os.getpid()}.ckpt")

    def _remove_partials(self, tmp):
        for leftover in (tmp, tmp[:-len(".ckpt")] + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)

    def _write(self, train_cell, path, meta):
        tmp = self._temporary(path)
        try:
            names = _saved_names(train_cell)
            ms.save_checkpoint(train_cell, tmp, append_dict=dict(meta), choice_func=lambda n: n in names,
                               crc_check=True)
            if not os.path.isfile(tmp):
                raise OSError(errno.EIO, "MindSpore reported no error but wrote no file")
            os.replace(tmp, path)
        except (OSError, RuntimeError, ValueError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else \
                (str(err).strip().splitlines() or [type(err).__name__])[0]
            kept = self.last_saved if self.last_saved and os.path.isfile(self.last_saved) else None
            raise CheckpointSaveError(
                f"could not save the checkpoint {path} ({reason}); stopping. "
                + (f"The previous checkpoint {kept} is intact." if kept else "No checkpoint had been saved yet.")
            ) from None
        finally:
            self._remove_partials(tmp)

    def save(self, train_cell, epoch_num, steps_per_epoch, meta):
        """Save after ``epoch_num`` finished epochs; returns the path (None when disabled)."""
        if not self.enabled:
            return None
        path = os.path.join(self.directory, f"{self.prefix}-{epoch_num}_{steps_per_epoch}.ckpt")
        self._write(train_cell, path, meta)
        self.last_saved = path
        for old in self.epoch_files()[:-self.keep_max]:
            try:
                os.remove(old)
            except OSError:
                pass
        return path

    def save_best(self, train_cell, meta, same_as=None):
        """Write ``best.ckpt``: a hard link to (or copy of) ``same_as`` when that file holds the same state."""
        if not self.enabled:
            return None
        if same_as and os.path.isfile(same_as):
            tmp = self._temporary(self.best_path)
            try:
                try:
                    os.link(same_as, tmp)
                except OSError:
                    shutil.copyfile(same_as, tmp)
                os.replace(tmp, self.best_path)
            except OSError as err:
                raise CheckpointSaveError(f"could not write {self.best_path} ({err.strerror or err}); stopping. "
                                          f"The checkpoint {same_as} is intact.") from None
            finally:
                self._remove_partials(tmp)
        else:
            self._write(train_cell, self.best_path, meta)
        return self.best_path


class CheckpointSaver(Callback):
    """Saves every ``save_every`` epochs and at the last one; ``best.ckpt`` follows the best accuracy (the
    latest state when nothing is evaluated).

    Args:
        manager: a ``CheckpointManager``.
        train_step: the cell whose parameters (network, optimizer state, EMA, loss scale, counters) are saved.
        max_epoch, save_every: the schedule.
        meta_fn: ``meta_fn(epoch_num, global_step, best_acc) -> dict`` of ``models.checkpoint.META_KEYS``.
        best_acc: the best accuracy so far.
        evaluates: whether any epoch is evaluated.
    """

    def __init__(self, manager, train_step, max_epoch, save_every, meta_fn, best_acc=-1.0, evaluates=True):
        super().__init__()
        self.manager = manager
        self.train_step = train_step
        self.max_epoch = int(max_epoch)
        self.save_every = max(1, int(save_every))
        self.meta_fn = meta_fn
        self.best_acc = float(best_acc)
        self.evaluates = bool(evaluates)

    def on_train_epoch_end(self, run_context):
        cb_params = run_context.original_args()
        epoch_num = cb_params.cur_epoch_num
        result = cb_params.get("eval_result")
        improved = result is not None and result["top1"] > self.best_acc
        if improved:
            self.best_acc = result["top1"]
        meta = self.meta_fn(epoch_num, epoch_num * cb_params.batch_num, self.best_acc)
        saved = None
        if epoch_num % self.save_every == 0 or epoch_num == self.max_epoch:
            saved = self.manager.save(self.train_step, epoch_num, cb_params.batch_num, meta)
        if improved or (not self.evaluates and saved is not None):
            self.manager.save_best(self.train_step, meta, same_as=saved)


class ProfilerCallback(Callback):
    """MindSpore's profiler from the first to the last step; the analysis goes to ``output_path``."""

    def __init__(self, output_path):
        super().__init__()
        self.output_path = output_path
        self.profiler = None

    def on_train_begin(self, run_context):
        from mindspore import Profiler
        self.profiler = Profiler(output_path=self.output_path)

    def on_train_end(self, run_context):
        if self.profiler is not None:
            self.profiler.analyse()


def find_latest_checkpoint(directory, prefix=None, readable=None):
    """Newest epoch checkpoint (``prefix-E_S.ckpt``, highest E, then newest file) in ``directory`` or None.

    With ``readable`` (a callable path -> bool) files it rejects are skipped, newest first.
    """
    pattern = re.compile(r"^" + (re.escape(prefix) if prefix else r".+") + r"-(\d+)_(\d+)\.ckpt$")
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), "*.ckpt")):
        match = pattern.match(os.path.basename(path))
        if match:
            found.append(((int(match.group(1)), os.path.getmtime(path)), path))
    for _, path in sorted(found, reverse=True):
        if readable is None or readable(path):
            return path
    return None


def checkpoint_is_readable(path):
    """Whether ``path`` loads (MindSpore checks its CRC) and holds our metadata."""
    try:
        return "epoch_num" in read_checkpoint_meta(path)
    except Exception:  # pylint: disable=broad-except  (any failure to read means: not usable)
        return False


def meta_entries(epoch_num, global_step, best_acc, class_names, backbone, eval_config=None):
    """The META_KEYS entries of a training checkpoint (``eval_config``: the settings its accuracy was
    measured with, ``src.checkpoint_settings.eval_settings``)."""
    entries = {"epoch_num": int(epoch_num), "step_num": int(global_step), "best_acc": float(best_acc),
               "class_names": json.dumps(list(class_names)), "backbone": str(backbone)}
    if eval_config is not None:
        entries["eval_config"] = json.dumps(dict(eval_config))
    return entries
