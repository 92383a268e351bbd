"""ModelArts support: copy inputs from OBS before a job and its outputs back after it.

    from src.model_utils.moxing_adapter import moxing_wrapper

    moxing_wrapper(config)(run_training)(config)      # or as a decorator: @moxing_wrapper(config)

With ``config.enable_modelarts`` false the wrapper calls the function unchanged and never imports
``moxing``. With it true (``moxing`` must be importable, as on ModelArts images):

1. ``data_url`` is copied to ``data_path`` and ``checkpoint_url`` to ``load_path`` with
   ``moxing.file.copy_parallel`` (``moxing.file.copy`` for a single-file URL such as ``.../x.ckpt``).
   One process per server copies (``device_adapter.is_first_local_rank``); the others wait until it
   has written a lock file (or a failure marker, which makes them fail too). A dataset uploaded as
   archives, as the original port's ModelArts recipe does (``train/*.tar``, ``val/*.tar``; also ``.tar.gz``,
   ``.tgz``), is unpacked there by the copying process before the others go on (``extract_archives``).
2. Config paths are pointed at the local copies (see ``localise_config_paths``): an empty
   ``dataset_path`` becomes ``data_path`` (a relative one is taken inside it, as is a relative
   ``eval_path``; one naming an environment variable that is not set, as the per-model configs'
   ``$DATA_PATH/imagenet``, is replaced by ``data_path`` with a line saying so); an empty ``checkpoint_file_path`` becomes the fetched checkpoint file, a relative
   one (and a relative ``pretrained``) is taken inside ``load_path``; an empty ``output_path`` becomes
   ``/cache/train``. ``device_id`` / ``device_num`` come from the environment.
3. ``pre_process()`` (if given), the function, ``post_process()`` (if given).
4. ``output_path`` is copied to ``train_url`` at the end, also when the function raised (the
   exception is then re-raised; a failing copy never hides it).

Lock files live in ``$MOXING_LOCK_DIR`` (default: the system temporary folder) and are named after the
job id (``device_adapter.get_job_id``), so a fresh job never sees a previous job's lock.
"""
import functools
import os
import sys
import tarfile
import tempfile
import time
import traceback

from . import device_adapter
from .config import unset_variables

__all__ = ["run_job", "moxing_wrapper", "import_moxing", "sync_data", "extract_archives", "localise_config_paths",
           "MoxingError", "DEFAULT_OUTPUT_PATH"]

DEFAULT_OUTPUT_PATH = "/cache/train"
#: seconds the other processes of a server wait for the copying one
SYNC_TIMEOUT = float(os.environ.get("MOXING_SYNC_TIMEOUT", 6 * 3600))
_POLL_SECONDS = 0.2


class MoxingError(RuntimeError):
    """moxing is missing, or a copy from / to OBS failed."""


def import_moxing():
    """``import moxing`` or a MoxingError that says what to do."""
    try:
        import moxing as mox  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise MoxingError("enable_modelarts is set but the 'moxing' package cannot be imported "
                          f"({err}); run on a ModelArts image, or set --enable_modelarts 0 to use local paths"
                          ) from None
    return mox


def _log(message):
    print(f"[moxing] {message}", flush=True)


def _lock_path(tag):
    folder = os.environ.get("MOXING_LOCK_DIR") or tempfile.gettempdir()
    os.makedirs(folder, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{device_adapter.get_job_id()}_{tag}")
    return os.path.join(folder, f"moxing_{safe}.lock")


def _is_file_url(url):
    """A URL naming one file (``.../model.ckpt``) rather than a folder."""
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return not url.endswith("/") and "." in base and os.path.splitext(base)[1].lower() in (
        ".ckpt", ".mindir", ".pth", ".npz", ".json", ".yaml", ".yml", ".air", ".onnx", ".txt")


def _copy_in(mox, url, local):
    """Copy ``url`` (folder or single file) into the local folder ``local``; returns the local path."""
    os.makedirs(local, exist_ok=True)
    started = time.time()
    if _is_file_url(url):
        target = os.path.join(local, url.rstrip("/").rsplit("/", 1)[-1])
        mox.file.copy(url, target)
    else:
        target = local
        mox.file.copy_parallel(url, local)
    _log(f"copied {url} -> {target} in {time.time() - started:.1f}s")
    return target


#: archive names of a dataset uploaded as archives
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _safe_members(archive, path):
    """The members of ``archive``; MoxingError for one that would land outside its folder or is not a plain
    file or folder."""
    members = archive.getmembers()
    for member in members:
        name = member.name
        outside = os.path.isabs(name) or ".." in name.replace("\\", "/").split("/")
        if outside or not (member.isfile() or member.isdir()):
            raise MoxingError(f"refusing to unpack {path}: its member {name!r} is not a plain file or folder "
                              "inside it")
    return members


def extract_archives(root):
    """Unpack the archives of a dataset in ``root``, ``root/train`` and ``root/val``; returns their paths.

    The original port's recipe uploads ImageNet as ``train/imagenet_train.tar`` and ``val/imagenet_val.tar``
    holding the class folders: each archive is unpacked into the folder it lies in and then removed (the
    local copy only; OBS keeps it). An archive whose members are all files at its top level (ImageNet's
    per-class ``n01440764.tar``) is unpacked into a folder named after it. A member that would land outside
    the folder (absolute path, ``..``, links, devices) is refused with a MoxingError.
    """
    done = []
    for folder in (root, os.path.join(root, "train"), os.path.join(root, "val")):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            suffix = next((s for s in ARCHIVE_SUFFIXES if name.lower().endswith(s)), None)
            if suffix is None or not os.path.isfile(path):
                continue
            started = time.time()
            try:
                with tarfile.open(path) as archive:
                    members = _safe_members(archive, path)
                    flat = members and all(m.isfile() and "/" not in m.name.strip("/") for m in members)
                    target = os.path.join(folder, name[:-len(suffix)]) if flat else folder
                    os.makedirs(target, exist_ok=True)
                    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    archive.extractall(target, members=members, **extra)
            except (tarfile.TarError, OSError) as err:
                raise MoxingError(f"cannot unpack {path}: {err}") from None
            os.remove(path)
            _log(f"unpacked {path} into {target} in {time.time() - started:.1f}s")
            done.append(path)
    return done


def sync_data(mox, url, local, tag, timeout=None, unpack=False):
    """Copy ``url`` to ``local`` once per server; every process returns the local path.

    ``unpack``: the copying process also unpacks the dataset's archives (``extract_archives``).

    The first local rank copies and then writes the lock file; the others wait for it (at most
    ``timeout`` seconds, default SYNC_TIMEOUT) and raise MoxingError if the copy failed or never ended.
    """
    lock = _lock_path(tag)
    failed = lock + ".failed"
    file_target = os.path.join(local, url.rstrip("/").rsplit("/", 1)[-1]) if _is_file_url(url) else local
    if device_adapter.is_first_local_rank():
        for stale in (lock, failed):
            if os.path.exists(stale):
                os.remove(stale)
        try:
            target = _copy_in(mox, url, local)
            if unpack and os.path.isdir(target):
                extract_archives(target)
        except Exception as err:
            with open(failed, "w", encoding="utf-8") as fh:
                fh.write(f"{type(err).__name__}: {err}\n")
            raise MoxingError(f"copying {url} to {local} failed: {err}") from err
        tmp = f"{lock}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(target + "\n")
        os.replace(tmp, lock)
        return target
    timeout = SYNC_TIMEOUT if timeout is None else timeout
    deadline = time.time() + timeout
    _log(f"waiting for the first process of this server to copy {url} ({lock})")
    while not os.path.exists(lock):
        if os.path.exists(failed):
            with open(failed, encoding="utf-8") as fh:
                reason = fh.read().strip()
            raise MoxingError(f"the copy of {url} by the first process of this server failed: {reason}")
        if time.time() > deadline:
            raise MoxingError(f"gave up after {timeout:.0f}s waiting for {url} to be copied to {local} "
                              f"(lock file {lock} never appeared)")
        time.sleep(_POLL_SECONDS)
    return file_target


def _inside(folder, path):
    return path if os.path.isabs(path) else os.path.join(folder, path)


def localise_config_paths(config, data_local=None, checkpoint_local=None):
    """Point the config's paths at the local copies (see the module docstring); returns ``config``."""
    if data_local is not None:
        dataset_path = config.raw("dataset_path")
        if dataset_path and unset_variables(dataset_path) and not os.path.exists(dataset_path):
            _log(f"dataset_path {dataset_path} names an unset environment variable: using data_path "
                 f"{config.data_path}, where data_url was copied")
            dataset_path = ""
        config.dataset_path = _inside(config.data_path, dataset_path) if dataset_path else config.data_path
        if config.get("eval_path") and not os.path.isabs(config.eval_path) and "eval_path" in config.explicit_keys:
            config.eval_path = _inside(config.data_path, config.eval_path)
    if checkpoint_local is not None:
        if not config.checkpoint_file_path:
            if os.path.isfile(checkpoint_local):
                config.checkpoint_file_path = checkpoint_local
        else:
            config.checkpoint_file_path = _inside(config.load_path, config.checkpoint_file_path)
        if config.get("pretrained") and not os.path.isabs(config.pretrained):
            config.pretrained = _inside(config.load_path, config.pretrained)
    if not config.output_path:
        config.output_path = DEFAULT_OUTPUT_PATH
    config.device_id = device_adapter.get_device_id()
    config.device_num = device_adapter.get_device_num()
    return config


def _copy_out(mox, config):
    if not config.train_url:
        _log("train_url is empty: outputs are not copied back")
        return
    if not device_adapter.is_first_local_rank():
        return
    if not os.path.isdir(config.output_path):
        _log(f"no output folder {config.output_path} to copy back")
        return
    started = time.time()
    mox.file.copy_parallel(config.output_path, config.train_url)
    _log(f"copied {config.output_path} -> {config.train_url} in {time.time() - started:.1f}s")


def moxing_wrapper(config, pre_process=None, post_process=None):
    """Decorator: run the function as a ModelArts job when ``config.enable_modelarts`` (see the module doc)."""

    def decorator(run_func):
        @functools.wraps(run_func)
        def wrapped(*args, **kwargs):
            if not config.enable_modelarts:
                return run_func(*args, **kwargs)
            mox = import_moxing()
            _log(device_adapter.describe())
            data_local = ckpt_local = None
            if config.data_url:
                data_local = sync_data(mox, config.data_url, config.data_path, "data", unpack=True)
            if config.checkpoint_url:
                ckpt_local = sync_data(mox, config.checkpoint_url, config.load_path, "checkpoint")
            localise_config_paths(config, data_local, ckpt_local)
            os.makedirs(config.output_path, exist_ok=True)
            if pre_process is not None:
                pre_process()
            failed = True
            try:
                result = run_func(*args, **kwargs)
                if post_process is not None:
                    post_process()
                failed = False
                return result
            finally:
                try:
                    _copy_out(mox, config)
                except Exception as err:  # pylint: disable=broad-except
                    if not failed:
                        raise MoxingError(f"copying {config.output_path} to {config.train_url} failed: {err}"
                                          ) from err
                    print(f"[moxing] copying {config.output_path} to {config.train_url} failed too: {err}",
                          file=sys.stderr, flush=True)

        return wrapped

    return decorator


#: mistakes a user can fix; an entry point reports them in one line (ConfigError is a ValueError)
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, MoxingError)


def run_job(job, argv=None, exit_codes=None):
    """Entry point of train.py / eval.py / export.py: load the config from ``argv``, run ``job(config)``
    (inside ``moxing_wrapper`` when ``enable_modelarts``) and turn a user mistake into one ``ERROR:`` line.

    Returns the exit status: 0, 1 for a mistake, or ``exit_codes[type]`` for the exception types listed
    there (e.g. ``{TrainingDiverged: 3}``); an exception with an ``exit_code`` attribute (an interrupted
    run: 128 + the signal) gives that. ``SOFT_DEBUG=1`` also prints the traceback.
    """
    from .config import load_config

    exit_codes = dict(exit_codes or {})
    try:
        config = load_config(argv)
        if config.enable_modelarts:
            moxing_wrapper(config)(job)(config)
        else:
            job(config)
    except tuple(exit_codes) + USER_ERRORS as err:
        if os.environ.get("SOFT_DEBUG"):
            traceback.print_exc()
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        if hasattr(err, "exit_code"):
            return int(err.exit_code)
        return next((code for cls, code in exit_codes.items() if isinstance(err, cls)), 1)
    return 0
