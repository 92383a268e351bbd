"""Per-step learning-rate schedules.

``get_lr`` returns one float32 value per optimizer step, ``max_epoch * steps_per_epoch`` values in all:

* warmup: the first ``round(warmup_epochs * steps_per_epoch)`` steps rise linearly from ``lr_init``
  (step 0) towards ``lr_max`` (reached at the first step after the warmup);
* then one of the decays over the remaining ``T`` steps, with progress ``p = t / (T - 1)`` running
  from 0 at the first decay step to 1 at the very last step:

  - ``cosine``: ``lr_min + (lr_max - lr_min) * (1 + cos(pi * p)) / 2`` (ends exactly at ``lr_min``);
  - ``exponential``: ``lr_max * (lr_min / lr_max) ** p`` (geometric; needs ``lr_min > 0``);
  - ``step``: piecewise constant over three equal parts of the decay epochs (changes happen at epoch
    boundaries): ``lr_max``, ``lr_max / 10``, ``lr_max / 100``, never below ``lr_min``;
  - ``constant``: ``lr_max`` (``lr_min`` is not used).

The array is indexed by the optimizer's global step, so a resumed run whose optimizer state was
restored continues at the right position of the schedule.
"""
import math

import numpy as np

__all__ = ["DECAY_MODES", "get_lr", "warmup_steps_of", "lr_from_config"]

DECAY_MODES = ("cosine", "exponential", "step", "constant")


def warmup_steps_of(warmup_epochs, steps_per_epoch):
    """Number of warmup steps (``warmup_epochs`` may be fractional)."""
    return int(round(float(warmup_epochs) * steps_per_epoch))


def get_lr(lr_init, lr_max, lr_min, warmup_epochs, max_epoch, steps_per_epoch, decay_mode="cosine"):
    """Learning rate of every step, a float32 array of length ``max_epoch * steps_per_epoch``.

    Raises:
        ValueError: an unknown ``decay_mode``, a non-positive epoch or step count, a warmup longer
            than the run, or ``exponential`` decay with ``lr_min <= 0``.
    """
    mode = str(decay_mode).lower()
    if mode not in DECAY_MODES:
        raise ValueError(f"lr_decay_mode must be one of {', '.join(DECAY_MODES)}, got {decay_mode!r}.")
    max_epoch, steps_per_epoch = int(max_epoch), int(steps_per_epoch)
    if max_epoch <= 0:
        raise ValueError(f"max_epoch must be positive, got {max_epoch}.")
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch} (is the dataset empty or "
                         "smaller than one batch?).")
    if float(warmup_epochs) < 0:
        raise ValueError(f"warmup_epochs must not be negative, got {warmup_epochs}.")
    lr_init, lr_max, lr_min = float(lr_init), float(lr_max), float(lr_min)
    total = max_epoch * steps_per_epoch
    warmup = warmup_steps_of(warmup_epochs, steps_per_epoch)
    if warmup > total:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) is longer than the whole run (max_epoch {max_epoch}).")
    if mode == "exponential" and (lr_min <= 0 or lr_max <= 0):
        raise ValueError("lr_decay_mode exponential decays geometrically from lr_max to lr_min and needs "
                         f"lr_min > 0 and lr_max > 0 (got lr_min={lr_min}, lr_max={lr_max}).")

    lr = np.empty(total, dtype=np.float64)
    if warmup:
        lr[:warmup] = lr_init + (lr_max - lr_init) * np.arange(warmup) / warmup
    decay = total - warmup
    if decay:
        t = np.arange(decay, dtype=np.float64)
        p = t / (decay - 1) if decay > 1 else np.ones_like(t)
        if mode == "cosine":
            values = lr_min + (lr_max - lr_min) * 0.5 * (1.0 + np.cos(math.pi * p))
            if decay == 1:
                values[:] = lr_max
        elif mode == "exponential":
            values = lr_max * (lr_min / lr_max) ** p
            if decay == 1:
                values[:] = lr_max
        elif mode == "step":
            # epochs of the decay phase (the warmup may end inside an epoch: count by global epoch)
            global_step = warmup + t
            epoch = np.floor(global_step / steps_per_epoch)
            first_epoch = math.floor(warmup / steps_per_epoch)
            decay_epochs = max(1, max_epoch - first_epoch)
            part = np.minimum(2, np.floor((epoch - first_epoch) * 3 / decay_epochs))
            values = np.maximum(lr_min, lr_max * 0.1 ** part)
        else:  # constant
            values = np.full(decay, lr_max)
        lr[warmup:] = values
    return lr.astype(np.float32)


def lr_from_config(config, steps_per_epoch):
    """``get_lr`` with the values of a loaded config."""
    return get_lr(lr_init=config.lr_init, lr_max=config.lr_max, lr_min=config.lr_min,
                  warmup_epochs=config.warmup_epochs, max_epoch=config.max_epoch,
                  steps_per_epoch=steps_per_epoch, decay_mode=config.lr_decay_mode)
