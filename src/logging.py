"""Logger for train.py / eval.py: console plus ``log_dir/log_rank{R}.txt`` (rank 0 writes files only).

The log file also receives the warnings of the project's library loggers (``logging.getLogger("src...")``,
e.g. the input pipeline naming a skipped image) while the ``TrainLogger`` is open.
"""
import logging
import os
import sys
from datetime import datetime

__all__ = ["TrainLogger", "get_logger"]

_FORMAT = "%(asctime)s:%(levelname)s:%(message)s"
#: parent of the library modules' loggers (src.dataset, src.image_manifest, ...)
_LIBRARY_LOGGER = "src"


class TrainLogger(logging.Logger):
    """A ``logging.Logger`` with ``save_args``; only rank 0 writes a log file."""

    def __init__(self, name, log_dir=None, rank=0, console=True):
        super().__init__(name)
        self.rank = int(rank)
        self.log_file = None
        self.setLevel(logging.INFO)
        formatter = logging.Formatter(_FORMAT)
        if console:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(formatter)
            # other ranks only report problems on the console
            handler.setLevel(logging.INFO if self.rank == 0 else logging.WARNING)
            self.addHandler(handler)
        if log_dir and self.rank == 0:
            os.makedirs(log_dir, exist_ok=True)
            stamp = datetime.now().strftime("%Y-%m-%d_time_%H_%M_%S")
            self.log_file = os.path.join(log_dir, f"{name}_{stamp}_rank_{self.rank}.log")
            file_handler = logging.FileHandler(self.log_file)
            file_handler.setFormatter(formatter)
            self.addHandler(file_handler)
            library = logging.getLogger(_LIBRARY_LOGGER)
            library.addHandler(file_handler)
            if library.getEffectiveLevel() > logging.WARNING:
                library.setLevel(logging.WARNING)

    def save_args(self, config):
        """Log every config key with its value, sorted."""
        if callable(getattr(config, "to_dict", None)):
            items = config.to_dict().items()
        elif isinstance(config, dict):
            items = config.items()
        else:
            items = vars(config).items()
        self.info("Args:")
        for key, value in sorted(items, key=lambda kv: str(kv[0])):
            if str(key).startswith("_"):
                continue
            self.info("--> %s: %s", key, value)
        self.info("")

    def close(self):
        for handler in list(self.handlers):
            handler.flush()
            handler.close()
            self.removeHandler(handler)
            logging.getLogger(_LIBRARY_LOGGER).removeHandler(handler)


def get_logger(log_dir=None, rank=0, name="train"):
    """A fresh ``TrainLogger`` writing to ``log_dir`` (rank 0 only)."""
    return TrainLogger(name, log_dir, rank)
