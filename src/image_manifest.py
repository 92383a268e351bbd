"""The verified file list of an ImageFolder, cached once per folder and reused by every run and rank.

    >>> from src.image_manifest import load_manifest
    >>> manifest = load_manifest("/data/imagenet/train", verify=True)
    >>> manifest.class_names[:2], len(manifest.paths), manifest.view   # view: see below

A **manifest** records the folder's classes and files, each with its size, mtime and verdict
(``native``: MindSpore decodes it; ``convert``: PIL decodes it, e.g. WebP or 16-bit PNG, and a PNG copy
is made once; ``bad``: unreadable, with the reason). It is written to the folder's **cache folder**:

1. ``<cache_dir>/<folder name>-<hash>/`` when a cache folder is configured (``data_cache_path``);
2. else ``<parent>/.<folder name>.imagecache/``, beside the data, when that is writable;
3. else ``<fallback_dir>/<folder name>-<hash>/`` (``src.dataset`` passes ``<output_path>/data_cache``).

A later run lists the folder (names, sizes, mtimes: no file is opened) and reuses every verdict whose
size and mtime are unchanged; only changed or added files are checked again, removed ones are dropped.
Files are checked by all the cores this process may use (``available_cores``; that many worker processes
for ``_PROCESS_MIN_FILES`` files or more, threads below), with a progress line (files checked / total, rate,
ETA) every few seconds on the console (``src.logging.CONSOLE``) and in ``build.progress``.

One process builds: it holds ``build.lock`` in the cache folder, which names it (``src.locks``: host,
PID, start time) and which it touches while it works. The others wait and then read the result, saying
what they wait for (the builder and its progress) when they start waiting and every
``_WAIT_REPORT_S`` seconds. A lock whose builder is gone (this host, PID not running) is taken over at
once, with one line; a lock of another host is taken over when untouched for ``_LOCK_STALE_S`` seconds.
Problems are reported by the caller (``report``), so a run names each bad file once.

The cache folder also holds the **view**: an ImageFolder of symbolic links to the usable files,
``view/<label:05d>/<file name>`` (``<file name>.png`` -> the PNG copy of a converted file), plus
``view/pad/pad.png`` (a black image, label -1). ``mindspore.dataset.ImageFolderDataset`` reads it
natively; index ``i`` of the view is ``paths[i]`` (classes in order, names sorted as bytes within a
class) and index ``len(paths)`` is the padding image. A changed folder changes only the links of the
added or removed files.
"""
import hashlib
import io
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.locks import create_lock, describe_owner, owner_record, owner_state, read_lock, remove_if_unchanged, \
    remove_own_lock
from src.logging import CONSOLE

__all__ = ["IMG_EXTENSIONS", "Manifest", "load_manifest", "list_image_folder", "check_image",
           "pil_to_rgb", "cache_folder", "class_folders", "available_cores"]

_LOG = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_EXTENSION_SET = frozenset(IMG_EXTENSIONS)
MANIFEST_NAME = "manifest.json"
_VERSION = 1
_LOCK_NAME = "build.lock"
_PROGRESS_NAME = "build.progress"
_LOCK_STALE_S = 120.0  # a lock of another host untouched this long belongs to a dead builder
_TOUCH_S = 10.0  # the builder touches its lock this often
_WAIT_REPORT_S = 15.0  # a waiting process says again what it waits for this often
_PROCESS_MIN_FILES = 512  # from this many files to check, worker processes (below: threads)
_CHUNK_FILES = 64  # files per task of a worker process
PAD_FOLDER = "pad"

# Formats and modes that MindSpore's C++ decoder turns into correct 3-channel RGB; anything else that
# PIL reads gets a PNG copy in the cache folder.
_NATIVE = {"JPEG": {"L", "RGB", "CMYK", "YCbCr"}, "PNG": {"1", "L", "LA", "P", "PA", "RGB", "RGBA"}}
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


# ----------------------------------------------------------------------------------------- one file
def _jpeg_has_end_marker(path):
    """True when the file ends with the JPEG EOI marker (trailing zero padding allowed)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64))
        tail = fh.read().rstrip(b"\x00\r\n ")
    return tail.endswith(b"\xff\xd9")


def check_image(path):
    """Check one file. Returns (ok, needs_pil, reason).

    ``needs_pil``: PIL decodes the file but MindSpore's decoder does not (reliably), e.g. 16-bit PNG or
    WebP. A JPEG without its end marker is decoded in full here: a truncated JPEG can kill MindSpore's
    native decoder (SIGFPE), so only the ones PIL decodes completely are kept, routed through PIL.
    """
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            img.verify()
        needs_pil = fmt not in _NATIVE or mode not in _NATIVE[fmt]
        if fmt == "JPEG" and not _jpeg_has_end_marker(path):
            needs_pil = True
        if needs_pil:
            with Image.open(path) as img:
                img.load()
        return True, needs_pil, ""
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        return False, False, f"{type(err).__name__}: {err}"
    except Exception as err:  # pylint: disable=broad-except  # any decoder failure means unusable
        return False, False, f"{type(err).__name__}: {err}"


def pil_to_rgb(img):
    """A PIL image of any mode -> RGB; 16-bit and float greys are scaled to 0..255 first."""
    if img.mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _write_png_copy(path, destination):
    with Image.open(path) as img:
        rgb = pil_to_rgb(img)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    _atomic_write(destination, buf.getvalue())


def _atomic_write(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ listing
def class_folders(folder):
    """The sorted class folder names of an ImageFolder; ValueError when the folder or its classes are missing."""
    if not os.path.isdir(folder):
        raise ValueError(f"dataset folder not found: {folder} "
                         f"(expected an ImageFolder: {os.path.join(folder, '<class>', '<image>')})")
    names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and _is_dir(e))
    if not names:
        raise ValueError(f"dataset folder {folder} has no class folders "
                         f"(expected {os.path.join(folder, '<class>', '<image>')})")
    return names


def _is_dir(entry):
    try:
        return entry.is_dir()
    except OSError:  # e.g. a symlink loop
        return False


def list_image_folder(folder):
    """List an ImageFolder without opening any file.

    Returns (class_names, files, problems, ignored): ``files`` is a list of (relative path, size,
    mtime_ns) in label order (classes sorted, files sorted within a class); ``problems`` lists (path,
    reason) for image-named entries that cannot be read (broken symbolic links, symbolic-link loops);
    ``ignored`` lists the relative paths of what the pipeline does not read: files of other extensions
    in the class folders or beside them, and folders inside class folders (``class/sub/``). Hidden files
    and folders (names starting with ".") are left out silently.
    Raises ValueError for a missing folder, no class folders or a class folder without images.
    """
    class_names = class_folders(folder)
    files, problems, empty = [], [], []
    with os.scandir(folder) as entries:
        ignored = sorted(e.name for e in entries if not e.name.startswith(".") and not _is_dir(e))
    for name in class_names:
        found = []
        with os.scandir(os.path.join(folder, name)) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                dot = entry.name.rfind(".")
                if dot < 0 or entry.name[dot:].lower() not in _EXTENSION_SET:
                    ignored.append(f"{name}/{entry.name}/" if _is_dir(entry) else f"{name}/{entry.name}")
                    continue
                try:
                    stat = entry.stat()
                except OSError as err:
                    reason = "broken symbolic link" if err.errno == 2 and entry.is_symlink() else \
                        f"{type(err).__name__}: {err.strerror}"
                    problems.append((entry.path, reason))
                    continue
                if entry.is_dir():
                    ignored.append(f"{name}/{entry.name}/")
                    continue
                found.append((f"{name}/{entry.name}", stat.st_size, stat.st_mtime_ns))
        if not found:
            empty.append(os.path.join(folder, name))
        files.extend(sorted(found))
    problems.sort()
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(f"empty class folder: {shown} (no {'/'.join(IMG_EXTENSIONS)} images); "
                         "remove it or add images")
    return class_names, files, problems, ignored


# ----------------------------------------------------------------------------------------- manifest
class Manifest:
    """The usable images of one ImageFolder, in label order.

    Attributes:
        folder: the ImageFolder (absolute path).
        class_names: sorted class folder names; label ``i`` is ``class_names[i]``.
        paths, labels: the usable images (absolute paths) and their labels.
        needs_pil: per image, True when MindSpore's decoder cannot read it and PIL must (verified
            manifests: the view links to a PNG copy; unverified: guessed from the extension).
        problems: (path, reason) of every file left out.
        view: the cache folder's ImageFolder of links; None when the images were not verified.
        ignored: relative paths of the files (and sub-folders, ``class/sub/``) the pipeline does not read.
    """

    def __init__(self, folder, class_names, paths, labels, needs_pil, problems, view, ignored=()):
        self.folder = folder
        self.class_names = class_names
        self.paths = paths
        self.labels = labels
        self.needs_pil = needs_pil
        self.problems = problems
        self.view = view
        self.ignored = list(ignored)

    @property
    def view_class_indexing(self):
        """``class_indexing`` of ``ImageFolderDataset(view)``: view folder name -> label (-1: padding)."""
        indexing = {f"{label:05d}": label for label in range(len(self.class_names))}
        indexing[PAD_FOLDER] = -1
        return indexing


def cache_folder(folder, cache_dir="", fallback_dir=""):
    """The cache folder of ``folder`` (created); see the module docstring for the order of choice."""
    folder = os.path.abspath(folder)
    name = os.path.basename(folder.rstrip(os.sep)) or "data"
    tag = f"{name}-{hashlib.sha1(folder.encode()).hexdigest()[:10]}"
    candidates = [os.path.join(cache_dir, tag)] if cache_dir else \
        [os.path.join(os.path.dirname(folder), f".{name}.imagecache"),
         os.path.join(fallback_dir or os.path.join(os.getcwd(), "data_cache"), tag)]
    for path in candidates:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise ValueError(f"no writable cache folder for the image manifest of {folder} (tried "
                     f"{', '.join(candidates)}); set data_cache_path to a writable folder")


def _read_manifest(path, folder):
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if data.get("version") != _VERSION or data.get("folder") != folder:
        return None
    return data


def _is_current(data, class_names, files):
    return data is not None and data["classes"] == class_names and \
        len(data["entries"]) == len(files) and all(e[0] == f[0] and e[1] == f[1] and e[2] == f[2]
                                                   for e, f in zip(data["entries"], files))


def _copy_name(rel):
    return hashlib.sha1(rel.encode()).hexdigest()[:20] + ".png"


def _check_and_convert(folder, cache, rel):
    path = os.path.join(folder, rel)
    ok, needs_pil, reason = check_image(path)
    if not ok:
        return "bad", reason
    if not needs_pil:
        return "native", ""
    try:
        _write_png_copy(path, os.path.join(cache, "converted", _copy_name(rel)))
    except Exception as err:  # pylint: disable=broad-except  # unreadable after all
        return "bad", f"{type(err).__name__}: {err}"
    return "convert", ""


def _check_chunk(folder, cache, rels):
    """The (verdict, reason) of each file of ``rels``: one task of a worker."""
    return [_check_and_convert(folder, cache, rel) for rel in rels]


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Progress:
    """The progress of a build: a console line every few seconds (5 s in the first minute, then 30 s) and
    ``build.progress`` in the cache folder, which the waiting processes read."""

    def __init__(self, folder, cache, total, of, workers, kind):
        self.folder = folder
        self.path = os.path.join(cache, _PROGRESS_NAME)
        self.total = int(total)
        self.start = time.monotonic()
        self.next = self.start + 5.0
        scope = "every file (first build; later runs check only new or changed files)" if total == of else \
            f"the new or changed files ({of:,} listed)"
        _LOG.info("image cache of %s: checking %s file%s with %d %s: %s", folder, f"{total:,}",
                  "" if total == 1 else "s", workers, kind, scope, extra=CONSOLE)

    def update(self, done):
        now = time.monotonic()
        if now < self.next:
            return
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        self.next = now + (5.0 if elapsed < 60 else 30.0)
        _LOG.info("image cache of %s: checked %s/%s files (%.0f files/s, ETA %s)", self.folder, f"{done:,}",
                  f"{self.total:,}", rate, _duration(eta) if eta is not None else "unknown", extra=CONSOLE)
        record = {"checked": done, "total": self.total, "rate": rate, "eta_s": eta, "time": time.time()}
        try:
            _atomic_write(self.path, json.dumps(record).encode())
        except OSError:
            pass

    def finish(self):
        elapsed = time.monotonic() - self.start
        _LOG.info("image cache of %s: checked %s/%s files in %s (%.0f files/s)", self.folder, f"{self.total:,}",
                  f"{self.total:,}", _duration(elapsed), self.total / max(elapsed, 1e-9), extra=CONSOLE)
        try:
            os.remove(self.path)
        except OSError:
            pass


def _read_progress(cache):
    """``checked 1,200/20,000 files, ETA 35s`` from the builder's ``build.progress``, or None."""
    try:
        with open(os.path.join(cache, _PROGRESS_NAME), encoding="utf-8") as fh:
            record = json.load(fh)
        eta = record.get("eta_s")
        return f"checked {int(record['checked']):,}/{int(record['total']):,} files" + \
            (f", ETA {_duration(eta)}" if eta is not None else "")
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _Threads:
    """Tasks of ``_check_chunk`` on threads of this process (a few files: no start-up cost)."""

    def __init__(self, count):
        self.pool = ThreadPoolExecutor(max_workers=count)
        self.capacity = 2 * count
        self.futures = {}

    def submit(self, task, folder, cache, rels):
        self.futures[self.pool.submit(_check_chunk, folder, cache, rels)] = task

    def collect(self, timeout):
        """[(task, verdicts)] of the tasks finished within ``timeout`` seconds."""
        finished, _ = wait(self.futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return [(self.futures.pop(future), future.result()) for future in finished]

    def close(self):
        self.pool.shutdown(cancel_futures=True)


class _Processes:
    """Tasks of ``_check_chunk`` on ``count`` worker processes, two tasks each in flight.

    Each worker is a fresh ``python -c`` running ``_worker_main`` (JSON lines over its stdin / stdout), so
    nothing of the caller is carried over: not its main module (multiprocessing's spawn would import it
    again, running an unguarded script's training twice), nor its threads (MindSpore's, which fork would
    copy mid-flight).
    """

    def __init__(self, count):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.insert(0, {root!r}); from src.image_manifest import _worker_main; _worker_main()"
        self.procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                      for _ in range(count)]
        self.selector = selectors.DefaultSelector()
        for proc in self.procs:
            self.selector.register(proc.stdout.fileno(), selectors.EVENT_READ, proc)
        self.in_flight = {proc.pid: {} for proc in self.procs}  # pid -> {task: (folder, rels)}
        self.received = {proc.pid: b"" for proc in self.procs}  # bytes read past the last complete line
        self.capacity = 2 * count

    def submit(self, task, folder, cache, rels):
        proc = min(self.procs, key=lambda p: len(self.in_flight[p.pid]))
        proc.stdin.write(json.dumps([task, folder, cache, rels]).encode() + b"\n")
        proc.stdin.flush()
        self.in_flight[proc.pid][task] = (folder, rels)

    def collect(self, timeout):
        """[(task, verdicts)] of the tasks answered within ``timeout`` seconds. The pipes are read with
        ``os.read`` (a buffered reader would keep a second answer where ``select`` cannot see it)."""
        results = []
        for key, _ in self.selector.select(timeout):
            proc = key.data
            data = os.read(key.fd, 1 << 20)
            if not data:
                self._died(proc)
            *lines, self.received[proc.pid] = (self.received[proc.pid] + data).split(b"\n")
            for line in lines:
                task, verdicts = json.loads(line)
                del self.in_flight[proc.pid][task]
                results.append((task, [tuple(v) for v in verdicts]))
        return results

    def _died(self, proc):
        """A worker ended with tasks in flight (a decoder crashed on a file): one sentence naming the files."""
        code = proc.wait()
        tasks = list(self.in_flight[proc.pid].values())
        if code >= 0 or not tasks:  # it failed by itself (its error is above), not on a file
            raise RuntimeError(f"a process checking images ended with exit code {code}; its error is printed above")
        rels = [rel for _, task_rels in tasks for rel in task_rels]
        shown = ", ".join(rels[:5]) + (f" and {len(rels) - 5} more" if len(rels) > 5 else "")
        raise ValueError(f"a process checking the images of {tasks[0][0]} was killed by signal {-code} on one of "
                         f"{shown}: move the file that crashes the decoder out of the folder and start again")

    def close(self):
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self.selector.close()


def _worker_main():
    """A worker process of ``_Processes``: ``[task, folder, cache, [rel, ...]]`` lines in, ``[task, [[verdict,
    reason], ...]]`` lines out, until its stdin closes. Ctrl-C is left to the parent, which ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the results
    for line in sys.stdin.buffer:
        task, folder, cache, rels = json.loads(line)
        out.write(json.dumps([task, _check_chunk(folder, cache, rels)]).encode() + b"\n")
        out.flush()


def _check_files(folder, cache, entries, todo, workers, lock):
    """Fill in the verdict and reason of ``entries[i]`` for every ``i`` of ``todo``.

    ``workers`` worker processes (``_Processes``) check ``_CHUNK_FILES`` files per task; fewer than
    ``_PROCESS_MIN_FILES`` files are checked by as many threads. Reports progress and keeps ``lock`` fresh.
    """
    use_processes = workers > 1 and len(todo) >= _PROCESS_MIN_FILES
    progress = _Progress(folder, cache, len(todo), len(entries), workers,
                         "processes" if use_processes else "threads")
    chunks = [todo[i:i + _CHUNK_FILES] for i in range(0, len(todo), _CHUNK_FILES)]
    pool = _Processes(workers) if use_processes else _Threads(workers)
    try:
        submitted = running = done = 0
        while done < len(todo):
            while running < pool.capacity and submitted < len(chunks):
                pool.submit(submitted, folder, cache, [entries[i][0] for i in chunks[submitted]])
                submitted += 1
                running += 1
            for task, verdicts in pool.collect(timeout=1.0):
                for i, (verdict, reason) in zip(chunks[task], verdicts):
                    entries[i][3], entries[i][4] = verdict, reason
                done += len(chunks[task])
                running -= 1
            lock.beat()
            progress.update(done)
    finally:
        pool.close()
    progress.finish()


def _build(folder, cache, class_names, files, old, workers, lock):
    """Check the new or changed files (reusing the verdicts of ``old``) and write the manifest."""
    known = {e[0]: e for e in old["entries"]} if old else {}
    entries, todo = [], []
    for rel, size, mtime in files:
        previous = known.get(rel)
        if previous and previous[1] == size and previous[2] == mtime:
            entries.append(list(previous))
        else:
            entries.append([rel, size, mtime, None, ""])
            todo.append(len(entries) - 1)
    os.makedirs(os.path.join(cache, "converted"), exist_ok=True)
    if todo:
        _check_files(folder, cache, entries, todo, workers, lock)
    data = {"version": _VERSION, "folder": folder, "classes": class_names, "entries": entries}
    _atomic_write(os.path.join(cache, MANIFEST_NAME), json.dumps(data, separators=(",", ":")).encode())
    return data


def _view_name(entry):
    """The link's name in the view: the file's own name (``.png`` appended for a PNG copy)."""
    name = entry[0].split("/", 1)[1]
    return f"{name}.png" if entry[3] == "convert" else name


def _view_digest(class_names, labels, entries):
    """Identifies the view's links: a file edited in place keeps its link."""
    digest = hashlib.sha1(json.dumps(class_names).encode())
    for label, entry in zip(labels, entries):
        digest.update(f"{label}/{_view_name(entry)}\n".encode())
    return digest.hexdigest()[:16]


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def _update_view(folder, cache, labels, entries, digest, lock):
    """Bring ``cache/view`` (see the module docstring) to ``entries``: links are added and removed, the
    others stay, so a changed folder costs one link per added or removed file."""
    view = os.path.join(cache, "view")
    stamp = os.path.join(view, ".complete")
    if _read_text(stamp) == digest:
        return view
    wanted = {}
    for label, entry in zip(labels, entries):
        target = os.path.join(cache, "converted", _copy_name(entry[0])) if entry[3] == "convert" else \
            os.path.join(folder, entry[0])
        wanted.setdefault(f"{label:05d}", {})[_view_name(entry)] = target
    os.makedirs(view, exist_ok=True)
    if os.path.exists(stamp):
        os.remove(stamp)
    for name in os.listdir(view):
        if name not in wanted and name != PAD_FOLDER:
            shutil.rmtree(os.path.join(view, name), ignore_errors=True)
    for name, links in wanted.items():
        lock.beat()
        class_view = os.path.join(view, name)
        os.makedirs(class_view, exist_ok=True)
        present = set(os.listdir(class_view))
        for link in present - links.keys():
            os.remove(os.path.join(class_view, link))
        for link in links.keys() - present:
            os.symlink(links[link], os.path.join(class_view, link))
    pad = os.path.join(view, PAD_FOLDER, "pad.png")
    if not os.path.isfile(pad):
        os.makedirs(os.path.dirname(pad), exist_ok=True)
        Image.new("RGB", (32, 32)).save(pad)
    _atomic_write(stamp, digest.encode())
    return view


class _BuildLock:
    """``build.lock`` of a cache folder: ``with`` waits for it and takes it, ``beat()`` keeps it fresh.

    While another live process holds it, says what it waits for (that process, its progress) when the
    wait starts and every ``_WAIT_REPORT_S`` seconds. Takes it over at once when its owner is gone (this
    host), or when it is untouched for ``_LOCK_STALE_S`` seconds (another host, or no owner named), with
    one line saying so.
    """

    def __init__(self, cache, folder):
        self.cache = cache
        self.path = os.path.join(cache, _LOCK_NAME)
        self.folder = folder
        self.owner = None
        self._touched = 0.0

    def __enter__(self):
        waited_since = reported = None
        while True:
            owner = owner_record()
            if create_lock(self.path, owner):
                self.owner, self._touched = owner, time.monotonic()
                return self
            try:
                raw, found = read_lock(self.path)
                age = time.time() - os.path.getmtime(self.path)
            except FileNotFoundError:
                continue
            state = owner_state(found) if found else "unknown"
            if state == "gone" or (state != "alive" and age > _LOCK_STALE_S):
                if remove_if_unchanged(self.path, raw):
                    why = (f"the process that held it ({describe_owner(found)}) is gone" if state == "gone" else
                           f"it is untouched for {age:.0f}s, so its builder "
                           f"({describe_owner(found) if found else 'not named in it'}) is taken for dead")
                    _LOG.warning("image cache of %s: taking over %s: %s", self.folder, self.path, why, extra=CONSOLE)
                continue
            now = time.monotonic()
            waited_since = now if waited_since is None else waited_since
            if reported is None or now - reported >= _WAIT_REPORT_S:
                reported = now
                who = describe_owner(found) if found else "not named in its lock"
                progress = _read_progress(self.cache)
                _LOG.info("image cache of %s: waiting for the process that builds it (%s%s; lock %s; waited %s)",
                          self.folder, who, f"; {progress}" if progress else "", self.path,
                          _duration(now - waited_since), extra=CONSOLE)
            time.sleep(0.2)

    def beat(self):
        """Touch the lock when it was last touched ``_TOUCH_S`` seconds ago or more."""
        now = time.monotonic()
        if now - self._touched >= _TOUCH_S:
            self._touched = now
            try:
                os.utime(self.path)
            except OSError:
                pass

    def __exit__(self, *exc):
        remove_own_lock(self.path, self.owner)


def available_cores():
    """The CPU cores this process may run on (its affinity: a launcher's or a scheduler's pinning)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_manifest(folder, verify=True, cache_dir="", fallback_dir="", workers=None):
    """The usable images of ``folder`` (a ``Manifest``); ``workers``: processes (threads for a few files)
    that check the files, default ``available_cores()``.

    With ``verify``, every image is checked once (``check_image``) and the verdicts are cached (see the
    module docstring); the manifest comes with its view. Without, the folder is only listed: no file
    is opened and nothing is written; ``needs_pil`` is guessed from the extension.
    Raises ValueError for a missing folder, no class folders, an empty class folder, or a class
    whose images are all unreadable.
    """
    folder = os.path.abspath(folder)
    class_names, files, problems, ignored = list_image_folder(folder)
    if not verify:
        paths = [os.path.join(folder, rel) for rel, _, _ in files]
        labels = _labels_of(class_names, files)
        needs_pil = [os.path.splitext(p)[1].lower() not in (".jpg", ".jpeg", ".png") for p in paths]
        return Manifest(folder, class_names, paths, labels, needs_pil, problems, None, ignored)

    cache = cache_folder(folder, cache_dir, fallback_dir)
    manifest_path = os.path.join(cache, MANIFEST_NAME)
    data = _read_manifest(manifest_path, folder)
    if not _is_current(data, class_names, files):
        with _BuildLock(cache, folder) as lock:
            data = _read_manifest(manifest_path, folder)  # another process may have built it meanwhile
            if not _is_current(data, class_names, files):
                data = _build(folder, cache, class_names, files, data, workers or available_cores(), lock)
    entries = data["entries"]
    all_labels = _labels_of(class_names, entries)
    problems += [(os.path.join(folder, e[0]), e[4]) for e in entries if e[3] == "bad"]
    # the view's order: classes, then link names as bytes (the order ImageFolderDataset reads them in)
    good = sorted((i for i, e in enumerate(entries) if e[3] != "bad"),
                  key=lambda i: (all_labels[i], os.fsencode(_view_name(entries[i]))))
    kept = [entries[i] for i in good]
    labels = [all_labels[i] for i in good]
    unreadable = [os.path.join(folder, n) for i, n in enumerate(class_names) if i not in set(labels)]
    if unreadable:
        raise ValueError(f"class folder without a readable image: {', '.join(unreadable[:5])}")
    digest = _view_digest(class_names, labels, kept)
    view = os.path.join(cache, "view")
    if _read_text(os.path.join(view, ".complete")) != digest:
        with _BuildLock(cache, folder) as lock:
            _update_view(folder, cache, labels, kept, digest, lock)
    paths = [f"{folder}{os.sep}{e[0]}" for e in kept]
    needs_pil = [e[3] == "convert" for e in kept]
    return Manifest(folder, class_names, paths, labels, needs_pil, problems, view, ignored)


def _labels_of(class_names, entries):
    index = {name: i for i, name in enumerate(class_names)}
    return [index[e[0].split("/", 1)[0]] for e in entries]
