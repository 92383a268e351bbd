"""Per-epoch bookkeeping of the training loop: the epoch log line, evaluation schedule, checkpoints.

The epoch line keeps the format of the original MindSpore port::

    epoch[3], epoch time: 12.34s, per step time: 0.0812s, loss=1.234567, lr=0.000550, fps=98.52, accuracy=0.912000, eval_cost=1.23

(``accuracy`` / ``eval_cost`` only on evaluation epochs). Epochs are numbered from 0 in the log.
"""
import glob
import json
import os
import re
import shutil

import mindspore as ms

__all__ = ["is_eval_epoch", "format_epoch_line", "StateMonitor", "CheckpointManager", "META_KEYS",
           "read_checkpoint_meta", "find_latest_checkpoint"]

# entries of our checkpoints that are not parameters of any cell
META_KEYS = ("epoch_num", "step_num", "best_acc", "class_names", "backbone")


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


def _atomic_save(save_obj, path, append_dict=None, choice_func=None):
    """Write a checkpoint next to ``path`` and move it into place: a crash never leaves a torn file."""
    # the temporary name ends in .ckpt (save_checkpoint appends it otherwise) and starts with a dot
    # (so that no listing of checkpoints picks it up)
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp.ckpt")
    try:
        ms.save_checkpoint(save_obj, tmp, append_dict=append_dict, choice_func=choice_func, crc_check=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_copy(src, dst):
    tmp = os.path.join(os.path.dirname(dst) or ".", f".{os.path.basename(dst)}.{os.getpid()}.tmp.ckpt")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_state(name):
    """Parameters saved in training checkpoints: everything except the learning-rate table."""
    return not name.startswith("learning_rate")


class CheckpointManager:
    """Saves ``{prefix}-{epoch}_{steps}.ckpt`` files, keeps the newest ``keep_max``, plus ``best.ckpt``.

    Only an enabled manager (rank 0 with save_checkpoint on) writes anything. Each file holds the
    train cell's parameters (network, optimizer moments and step, EMA copies) and META_KEYS.
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
            # temporary files of a save that was interrupted (they never replaced anything)
            for stale in glob.glob(os.path.join(directory, ".*.tmp.ckpt")):
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

    def save(self, train_cell, epoch_num, steps_per_epoch, meta):
        """Save after ``epoch_num`` finished epochs; returns the path (None when disabled)."""
        if not self.enabled:
            return None
        path = os.path.join(self.directory, f"{self.prefix}-{epoch_num}_{steps_per_epoch}.ckpt")
        _atomic_save(train_cell, path, append_dict=dict(meta), choice_func=_is_state)
        self.last_saved = path
        files = self.epoch_files()
        for old in files[:-self.keep_max]:
            try:
                os.remove(old)
            except OSError:
                pass
        return path

    def save_best(self, train_cell, meta, same_as=None):
        """Write ``best.ckpt`` (a copy of ``same_as`` when that file holds the same state)."""
        if not self.enabled:
            return None
        if same_as and os.path.isfile(same_as):
            _atomic_copy(same_as, self.best_path)
        else:
            _atomic_save(train_cell, self.best_path, append_dict=dict(meta), choice_func=_is_state)
        return self.best_path


def read_checkpoint_meta(path):
    """The META_KEYS of a checkpoint written by train.py (``class_names`` as a list); {} for others."""
    entries = ms.load_checkpoint(path, choice_func=lambda name: name in META_KEYS)
    meta = {}
    for key, value in entries.items():
        if isinstance(value, str):
            meta[key] = json.loads(value) if key == "class_names" else value
        else:
            number = value.asnumpy().item()
            meta[key] = number
    return meta


def find_latest_checkpoint(directory, prefix=None):
    """Newest epoch checkpoint (``prefix-E_S.ckpt``, highest E, then newest file) in ``directory`` or None."""
    pattern = re.compile(r"^" + (re.escape(prefix) if prefix else r".+") + r"-(\d+)_(\d+)\.ckpt$")
    best = None
    for path in glob.glob(os.path.join(directory, "*.ckpt")):
        match = pattern.match(os.path.basename(path))
        if match:
            key = (int(match.group(1)), os.path.getmtime(path))
            if best is None or key > best[0]:
                best = (key, path)
    return best[1] if best else None


class StateMonitor:
    """Epoch-end logic of the training loop: evaluation when scheduled, the log line, checkpoints.

    Args:
        logger: a ``logging.Logger`` (rank 0 prints).
        steps_per_epoch, global_batch: to compute per-step time and images per second.
        lrs: the per-step learning-rate array (the logged lr is that of the epoch's last step).
        max_epoch, eval_interval, eval_offset: see ``is_eval_epoch``.
        eval_fn: callable returning ``{"top1", "top5", "eval_cost"}`` or None for no evaluation.
        ckpt: a ``CheckpointManager``; save_checkpoint_epochs: save every that many epochs (and at the end).
        meta_fn: callable returning the META_KEYS dict for the checkpoint of ``epoch_num``.
    """

    def __init__(self, logger, steps_per_epoch, global_batch, lrs, max_epoch, eval_interval, eval_offset,
                 eval_fn=None, ckpt=None, save_checkpoint_epochs=1, best_acc=-1.0):
        self.logger = logger
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = global_batch
        self.lrs = lrs
        self.max_epoch = max_epoch
        self.eval_interval = eval_interval
        self.eval_offset = eval_offset
        self.eval_fn = eval_fn
        self.ckpt = ckpt
        self.save_every = max(1, int(save_checkpoint_epochs))
        self.best_acc = float(best_acc)
        self.last_result = None
        self.fps_history = []
        self.history = []

    @property
    def mean_fps(self):
        return sum(self.fps_history) / len(self.fps_history) if self.fps_history else 0.0

    def epoch_end(self, epoch, epoch_seconds, loss, global_step, train_cell=None, meta_fn=None):
        """Evaluate / log / save after the 0-based ``epoch`` ended at ``global_step`` (steps done)."""
        fps = self.global_batch * self.steps_per_epoch / max(epoch_seconds, 1e-9)
        self.fps_history.append(fps)
        lr = float(self.lrs[min(global_step, len(self.lrs)) - 1]) if len(self.lrs) else 0.0
        result = None
        if self.eval_fn is not None and is_eval_epoch(epoch, self.max_epoch, self.eval_interval, self.eval_offset):
            result = self.eval_fn()
            self.last_result = result
        line = format_epoch_line(epoch, epoch_seconds, self.steps_per_epoch, loss, lr, fps,
                                 None if result is None else result["top1"],
                                 None if result is None else result["eval_cost"])
        self.logger.info(line)
        record = {"epoch": epoch, "epoch_time": epoch_seconds, "loss": loss, "lr": lr, "fps": fps}
        if result is not None:
            self.logger.info(f"top5_accuracy={result['top5']:.6f} (epoch {epoch}, {result['count']} images)")
            record.update(accuracy=result["top1"], top5=result["top5"])
        self.history.append(record)

        improved = result is not None and result["top1"] > self.best_acc
        if improved:
            self.best_acc = result["top1"]
        epoch_num = epoch + 1
        saved = None
        if self.ckpt is not None and train_cell is not None:
            meta = meta_fn(epoch_num, global_step, self.best_acc) if meta_fn else {}
            if epoch_num % self.save_every == 0 or epoch_num == self.max_epoch:
                saved = self.ckpt.save(train_cell, epoch_num, self.steps_per_epoch, meta)
            # best.ckpt: best accuracy so far; without any evaluation, the latest state
            if improved or (self.eval_fn is None and saved is not None):
                self.ckpt.save_best(train_cell, meta, same_as=saved)
        return record
