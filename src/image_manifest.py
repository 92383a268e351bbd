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
One process builds (an exclusive lock file in the cache folder); the others wait for it and then read
the result. Problems are reported by the caller (``report``), so a run names each bad file once.

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
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMG_EXTENSIONS", "Manifest", "load_manifest", "list_image_folder", "check_image",
           "pil_to_rgb", "cache_folder", "class_folders"]

_LOG = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_EXTENSION_SET = frozenset(IMG_EXTENSIONS)
MANIFEST_NAME = "manifest.json"
_VERSION = 1
_LOCK_NAME = "build.lock"
_LOCK_STALE_S = 120.0  # a lock untouched this long belongs to a dead builder
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

    Returns (class_names, files, problems): ``files`` is a list of (relative path, size, mtime_ns) in
    label order (classes sorted, files sorted within a class); ``problems`` lists (path, reason) for
    image-named entries that cannot be read (broken symbolic links, symbolic-link loops). Hidden
    files and folders (names starting with ".") and files of other extensions are ignored.
    Raises ValueError for a missing folder, no class folders or a class folder without images.
    """
    class_names = class_folders(folder)
    files, problems, empty = [], [], []
    for name in class_names:
        found = []
        with os.scandir(os.path.join(folder, name)) as entries:
            for entry in entries:
                dot = entry.name.rfind(".")
                if entry.name.startswith(".") or dot < 0 or entry.name[dot:].lower() not in _EXTENSION_SET:
                    continue
                try:
                    stat = entry.stat()
                except OSError as err:
                    reason = "broken symbolic link" if err.errno == 2 and entry.is_symlink() else \
                        f"{type(err).__name__}: {err.strerror}"
                    problems.append((entry.path, reason))
                    continue
                if entry.is_dir():
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
    return class_names, files, problems


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
    """

    def __init__(self, folder, class_names, paths, labels, needs_pil, problems, view):
        self.folder = folder
        self.class_names = class_names
        self.paths = paths
        self.labels = labels
        self.needs_pil = needs_pil
        self.problems = problems
        self.view = view

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


def _build(folder, cache, class_names, files, old, workers):
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
    lock = os.path.join(cache, _LOCK_NAME)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda i: _check_and_convert(folder, cache, entries[i][0]), todo)
        last_touch = time.monotonic()
        for i, (verdict, reason) in zip(todo, results):
            entries[i][3], entries[i][4] = verdict, reason
            if time.monotonic() - last_touch > 10:  # keep the lock fresh for the waiting processes
                os.utime(lock)
                last_touch = time.monotonic()
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


def _update_view(folder, cache, labels, entries, digest):
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
    """An exclusive lock file. Waiters wait as long as the builder keeps it fresh (it touches the file
    while it checks images); a lock untouched for ``_LOCK_STALE_S`` was left by a dead builder."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
                os.close(fd)
                return self
            except FileExistsError:
                try:
                    if time.time() - os.path.getmtime(self.path) > _LOCK_STALE_S:
                        os.remove(self.path)
                        continue
                except OSError:
                    continue
            time.sleep(0.2)

    def __exit__(self, *exc):
        try:
            os.remove(self.path)
        except OSError:
            pass


def load_manifest(folder, verify=True, cache_dir="", fallback_dir="", workers=None):
    """The usable images of ``folder`` (a ``Manifest``).

    With ``verify``, every image is checked once (``check_image``) and the verdicts are cached (see the
    module docstring); the manifest comes with its view. Without, the folder is only listed: no file
    is opened and nothing is written; ``needs_pil`` is guessed from the extension.
    Raises ValueError for a missing folder, no class folders, an empty class folder, or a class
    whose images are all unreadable.
    """
    folder = os.path.abspath(folder)
    class_names, files, problems = list_image_folder(folder)
    if not verify:
        paths = [os.path.join(folder, rel) for rel, _, _ in files]
        labels = _labels_of(class_names, files)
        needs_pil = [os.path.splitext(p)[1].lower() not in (".jpg", ".jpeg", ".png") for p in paths]
        return Manifest(folder, class_names, paths, labels, needs_pil, problems, None)

    cache = cache_folder(folder, cache_dir, fallback_dir)
    manifest_path = os.path.join(cache, MANIFEST_NAME)
    data = _read_manifest(manifest_path, folder)
    if not _is_current(data, class_names, files):
        with _BuildLock(os.path.join(cache, _LOCK_NAME)):
            data = _read_manifest(manifest_path, folder)  # another process may have built it meanwhile
            if not _is_current(data, class_names, files):
                data = _build(folder, cache, class_names, files, data,
                              workers or min(16, 4 * (os.cpu_count() or 1)))
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
        with _BuildLock(os.path.join(cache, _LOCK_NAME)):
            _update_view(folder, cache, labels, kept, digest)
    paths = [f"{folder}{os.sep}{e[0]}" for e in kept]
    needs_pil = [e[3] == "convert" for e in kept]
    return Manifest(folder, class_names, paths, labels, needs_pil, problems, view)


def _labels_of(class_names, entries):
    index = {name: i for i, name in enumerate(class_names)}
    return [index[e[0].split("/", 1)[0]] for e in entries]
