"""Logger for train.py / eval.py: console plus ``log_dir/log_rank{R}.txt`` (rank 0 writes files only).

The log file also receives the project's library loggers (``logging.getLogger("src...")``, e.g. the input
pipeline naming each skipped image) while the ``TrainLogger`` is open. A library record logged with
``extra=CONSOLE`` (a summary, a wait, the progress of a long step) is shown on the console as well:

    >>> _LOG.warning("skipped 3 unreadable image(s) in %s: ...", folder, extra=CONSOLE)

Entry points without a ``TrainLogger`` (eval.py, the benchmarks) call ``library_console()``.
"""
import logging
import os
import sys
from datetime import datetime

__all__ = ["TrainLogger", "get_logger", "CONSOLE", "library_console"]

_FORMAT = "%(asctime)s:%(levelname)s:%(message)s"
#: parent of the library modules' loggers (src.dataset, src.image_manifest, ...)
_LIBRARY_LOGGER = "src"
#: ``extra=`` of a library record that belongs on the console too
CONSOLE = {"console": True}
#: the handlers the newest TrainLogger / library_console attached to the library logger
_ATTACHED = []


class _ConsoleRecords(logging.Filter):
    """Passes records logged with ``extra=CONSOLE``, and the others from ``others_from`` (None: none)."""

    def __init__(self, others_from=None):
        super().__init__()
        self.others_from = others_from

    def filter(self, record):
        if getattr(record, "console", False):
            return True
        return self.others_from is not None and record.levelno >= self.others_from


def _attach_to_library(handlers):
    """Route the library logger to ``handlers`` (replacing an earlier run's) at INFO and above."""
    library = logging.getLogger(_LIBRARY_LOGGER)
    for old in _ATTACHED:
        library.removeHandler(old)
    _ATTACHED[:] = handlers
    for handler in handlers:
        library.addHandler(handler)
    if library.getEffectiveLevel() > logging.INFO:
        library.setLevel(logging.INFO)


def library_console(stream=None):
    """Show the library's console records (INFO and above) and every other warning on ``stream``
    (default stderr): for entry points without a ``TrainLogger``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_ConsoleRecords(others_from=logging.WARNING))
    _attach_to_library([handler])
    return handler


class TrainLogger(logging.Logger):
    """A ``logging.Logger`` with ``save_args``; only rank 0 writes a log file."""

    def __init__(self, name, log_dir=None, rank=0, console=True):
        super().__init__(name)
        self.rank = int(rank)
        self.log_file = None
        self.setLevel(logging.INFO)
        formatter = logging.Formatter(_FORMAT)
        library_handlers = []
        if console:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(formatter)
            # other ranks only report problems on the console
            handler.setLevel(logging.INFO if self.rank == 0 else logging.WARNING)
            self.addHandler(handler)
            library_console_handler = logging.StreamHandler(sys.stdout)
            library_console_handler.setFormatter(formatter)
            library_console_handler.setLevel(handler.level)
            library_console_handler.addFilter(_ConsoleRecords())
            library_handlers.append(library_console_handler)
        if log_dir and self.rank == 0:
            os.makedirs(log_dir, exist_ok=True)
            stamp = datetime.now().strftime("%Y-%m-%d_time_%H_%M_%S")
            self.log_file = os.path.join(log_dir, f"{name}_{stamp}_rank_{self.rank}.log")
            file_handler = logging.FileHandler(self.log_file)
            file_handler.setFormatter(formatter)
            self.addHandler(file_handler)
            library_handlers.append(file_handler)
        self._library_handlers = library_handlers
        _attach_to_library(library_handlers)

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
        library = logging.getLogger(_LIBRARY_LOGGER)
        for handler in list(self.handlers) + self._library_handlers:
            handler.flush()
            handler.close()
            self.removeHandler(handler)
            library.removeHandler(handler)


def get_logger(log_dir=None, rank=0, name="train"):
    """A fresh ``TrainLogger`` writing to ``log_dir`` (rank 0 only)."""
    return TrainLogger(name, log_dir, rank)
