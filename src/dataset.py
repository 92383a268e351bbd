"""ImageFolder input pipelines for training and evaluation (mindspore.dataset).

    >>> from src.dataset import create_dataset
    >>> train_ds, class_names = create_dataset(config, training=True, rank_id=0, rank_size=1)
    >>> eval_ds, _ = create_dataset(config, training=False)

Layout: ``<dataset_path>/train/<class>/<image>`` for training, ``eval_path/<class>/<image>`` for
evaluation (``eval_path`` defaults to ``<dataset_path>/val``). Class names are the sorted folder
names; label ``i`` is ``class_names[i]``. Images may be JPEG (RGB, grayscale or CMYK), PNG (any
mode, 16-bit too), BMP, TIFF, WebP, PPM/PGM; extensions are matched case-insensitively; every image
is decoded to 3-channel RGB. Hidden files and folders are ignored.

Output columns (both pipelines, batched):

* ``image``: float32 [B, 3, H, W], normalised with the ImageNet mean/std.
* ``label``, training: float32 [B, class_num] soft targets; every row sums to 1 (one-hot,
  label-smoothed when ``use_label_smooth``, mixed by MixUp/CutMix when ``mixup``/``cutmix`` > 0).
  Training batches are full (``drop_remainder``); ``get_dataset_size()`` is the planned number of steps
  of every epoch, and the dataset can be iterated for any number of epochs.
* ``label``, evaluation: int32 [B]. Nothing is dropped: the last batch may be smaller.

Padding convention (evaluation on several ranks): when the number of evaluation images does not
divide by ``rank_size``, the shards are padded to the same length with black images whose label
is **-1**. A metric must skip samples with label < 0; then every real image is counted exactly
once over all ranks. With ``rank_size == 1`` there is no padding. Evaluation shards are fixed
and disjoint: image ``i`` (in the sorted file order) belongs to rank ``i % rank_size``.

Training shards: every epoch the whole file list is shuffled with the seed ``config.seed`` (the same
on every rank) and dealt out to ``rank_size`` disjoint shards (``mindspore.dataset.DistributedSampler``);
when the count does not divide by ``rank_size`` a few images repeat so all shards have equal length.
``create_dataset`` calls ``mindspore.dataset.config.set_seed(config.seed)``, which also seeds the
random augmentations.

Reading (``verify_images``, default on): the folder's manifest (``src/image_manifest.py``) is built once,
cached, and reused by later runs and the other ranks; unreadable files are left out with a warning
``skipping corrupt image: PATH (reason)`` (broken or looping symbolic links: ``skipping unreadable
image: ...``) on the ``src.dataset`` logger, which the trainer's log file receives, from rank 0 only.
The pipeline then reads the manifest's view with MindSpore's native ``ImageFolderDataset`` and decodes with
``RandomCropDecodeResize`` (only the crop's part of a JPEG is decoded); files MindSpore cannot decode
(WebP, 16-bit PNG, ...) are read from PNG copies made once in the cache folder.

With ``verify_images: false`` nothing is checked ahead: a Python reader checks the structure of every
file as it reads it (a truncated JPEG header can kill MindSpore's native decoder with SIGFPE), routes
what MindSpore cannot decode through PIL, and replaces a file nobody can decode with the next image of
the list, naming it once (``skipping corrupt image: ...``). Either way no sample is dropped: the epoch
length, and so the learning-rate schedule, stays as planned.

Mistakes in the data raise one ``ValueError`` naming the folder: a missing folder, a folder
without class sub-folders, an empty class folder, a training folder with one class, a class only
the evaluation (or only the training) folder has, a class count different from ``class_num``, too
few training images for one batch. What is left out is said on the console (rank 0): the count and
first names of the skipped files (each is named with its reason in the log), and the files of other
extensions (and sub-folders of class folders), counted by extension and by folder.
"""
import io
import logging
import math
import os
import threading

import numpy as np
from PIL import Image

from src.image_manifest import IMG_EXTENSIONS, available_cores, check_image, class_folders, load_manifest, pil_to_rgb
from src.logging import CONSOLE
from src.model_utils.device_adapter import get_local_rank_size

__all__ = ["create_dataset", "scan_image_folder", "resolve_train_folder", "resolve_eval_folder",
           "decode_for_eval", "eval_transform", "check_image", "eval_resize_size", "eval_interpolation",
           "IMG_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD"]

_LOG = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
#: files this process has named as unusable (each is named once; the unverified reader replaces them)
_UNREADABLE = set()
_UNREADABLE_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Folder scanning
# ---------------------------------------------------------------------------------------------
def _subset(indices, fraction):
    """A fixed per-class subset: the same files for the same fraction, whatever the seed."""
    if fraction >= 1.0 or not indices:
        return indices
    keep = max(1, int(round(len(indices) * fraction)))
    order = np.random.default_rng(0).permutation(len(indices))[:keep]
    return [indices[i] for i in sorted(order)]


def _select(manifest, fraction):
    """Indices into ``manifest.paths`` of the images used (a fixed per-class subset for fraction < 1)."""
    if fraction >= 1.0:
        return list(range(len(manifest.paths)))
    per_class = [[] for _ in manifest.class_names]
    for index, label in enumerate(manifest.labels):
        per_class[label].append(index)
    return [i for indices in per_class for i in _subset(indices, fraction)]


#: folders whose ignored files this process has reported
_IGNORED_REPORTED = set()
#: names a console summary shows before "and N more"
_SHOWN = 5


def _first_names(names):
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _report(manifest):
    """Say what the pipeline leaves out, once per process (training and evaluation may share a folder).

    Every skipped file is named with its reason (the run's log); the console gets one line with their
    count and the first few names, and one line counting the ignored files by extension and by folder.
    """
    new = [(path, reason) for path, reason in manifest.problems if path not in _UNREADABLE]
    for path, reason in new:
        kind = "corrupt" if os.path.exists(path) else "unreadable"
        _LOG.warning("skipping %s image: %s (%s)", kind, path, reason)
        _UNREADABLE.add(path)
    if new:
        names = [os.path.relpath(path, manifest.folder) for path, _ in new]
        _LOG.warning("skipped %d unreadable file(s) in %s: %s (the log names each with its reason)", len(new),
                     manifest.folder, _first_names(names), extra=CONSOLE)
    if manifest.ignored and manifest.folder not in _IGNORED_REPORTED:
        _IGNORED_REPORTED.add(manifest.folder)
        kinds, places = {}, {}
        for rel in manifest.ignored:
            if rel.endswith("/"):
                kind = "sub-folder"
            else:
                extension = os.path.splitext(rel)[1].lower()
                kind = extension or "no extension"
            kinds[kind] = kinds.get(kind, 0) + 1
            place = rel.split("/", 1)[0] + "/" if "/" in rel.rstrip("/") else "the folder itself"
            places[place] = places.get(place, 0) + 1
        by_kind = ", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
        by_place = _first_names([f"{place} ({count})" for place, count in
                                 sorted(places.items(), key=lambda kv: (-kv[1], kv[0]))])
        folders = kinds.get("sub-folder", 0)
        counted = f"{len(manifest.ignored) - folders} file(s)" + (f" and {folders} sub-folder(s)" if folders else "")
        _LOG.warning("ignored %s in %s that the pipeline does not read (%s), in %s; it reads %s files in the "
                     "class folders", counted, manifest.folder, by_kind, by_place, "/".join(IMG_EXTENSIONS),
                     extra=CONSOLE)


def _load(folder, verify, config=None, report=True, workers=None):
    cache_dir = str(getattr(config, "data_cache_path", "") or "") if config is not None else ""
    output = str(getattr(config, "output_path", "") or "") if config is not None else ""
    manifest = load_manifest(folder, verify=verify, cache_dir=cache_dir,
                             fallback_dir=os.path.join(output or os.getcwd(), "data_cache"), workers=workers)
    if report:
        _report(manifest)
    return manifest


def scan_image_folder(folder, verify=True, fraction=1.0, workers=None, report=True):
    """List an ImageFolder. Returns (class_names, paths, labels, needs_pil).

    ``verify``: check every file once, with the result cached (``src.image_manifest``); unreadable files
    are left out with a warning naming each one (when ``report``). Raises ValueError for a missing
    folder, no class folders or an empty class folder.
    """
    manifest = _load(folder, verify, report=report, workers=workers)
    chosen = _select(manifest, fraction)
    return (manifest.class_names, [manifest.paths[i] for i in chosen], [manifest.labels[i] for i in chosen],
            [manifest.needs_pil[i] for i in chosen])


def resolve_train_folder(config):
    """``<dataset_path>/train``; the original port's ``dataset_path`` = training folder also works."""
    root = config.dataset_path
    if not root:
        raise ValueError("dataset_path is empty: set it to the dataset root holding train/ and val/")
    train = os.path.join(root, "train")
    if os.path.isdir(train):
        return train
    if os.path.isdir(root) and os.path.basename(os.path.normpath(root)) == "train":
        return root
    if os.path.isdir(root) and not os.path.isdir(os.path.join(root, "val")):
        # original port: dataset_path points directly at an ImageFolder of classes
        try:
            if class_folders(root):
                return root
        except ValueError:
            pass
    raise ValueError(f"dataset folder not found: {train} (dataset_path must hold train/<class>/<image>)")


def resolve_eval_folder(config):
    folder = config.eval_path
    if not folder:
        raise ValueError("eval_path and dataset_path are both empty: set dataset_path (or eval_path)")
    return folder


# ---------------------------------------------------------------------------------------------
# The reader of unverified folders
# ---------------------------------------------------------------------------------------------
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_structure_ok(data):
    """True when the JPEG's header segments are complete up to the first scan and it ends with EOI.

    These are the files MindSpore's native decoder reads safely: it dies (SIGFPE) on a file cut inside
    its header and raises on one cut inside the scan data.
    """
    if not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return False
    pos, size, frame_ok = 2, len(data), False
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > size:
            return False
        if marker in _SOF_MARKERS:
            segment = data[pos + 4:pos + 2 + length]
            if len(segment) < 6:
                return False
            height, width, components = (segment[1] << 8) | segment[2], (segment[3] << 8) | segment[4], segment[5]
            factors = [segment[7 + 3 * c] for c in range(components) if 8 + 3 * c <= len(segment)]
            frame_ok = height > 0 and width > 0 and components in (1, 3, 4) and len(factors) == components \
                and all(1 <= f >> 4 <= 4 and 1 <= f & 15 <= 4 for f in factors)
        if marker == 0xDA:  # start of scan: the header is complete
            return frame_ok
        pos += 2 + length
    return False


def _native_safe(data):
    """True for bytes MindSpore's decoder turns into correct RGB without risk (8-bit PNG, sound JPEG)."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_structure_ok(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return len(data) > 45 and data[12:16] == b"IHDR" and data[24] <= 8 and data[-8:-4] == b"IEND"
    return False


def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def _read_encoded(path):
    """Encoded bytes MindSpore decodes safely: the file itself, or PIL's decode of it as PNG.

    Raises OSError / ValueError (PIL's errors) for a file nobody can decode.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if _native_safe(raw.tobytes()):
        return raw
    with Image.open(path) as img:
        img.load()
        return _png_bytes(pil_to_rgb(img))


class _CheckedReader:
    """Random-access source for unverified files: index -> (encoded bytes uint8 [n], label int32 []).

    A file that cannot be decoded is named once (per process) and replaced by the next readable image
    of the list, with that image's label, so the number of samples never changes. Indices past the
    images (``pad`` of them) give a black image with label -1.
    """

    def __init__(self, paths, labels, pad=0):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.pad = int(pad)
        self.pad_bytes = _png_bytes(Image.new("RGB", (32, 32))) if pad else None

    def __len__(self):
        return len(self.paths) + self.pad

    def __getitem__(self, index):
        index = int(index)
        if index >= len(self.paths):
            return self.pad_bytes, np.array(-1, dtype=np.int32)
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            path = self.paths[candidate]
            if path in _UNREADABLE:
                continue
            try:
                return _read_encoded(path), self.labels[candidate]
            except Exception as err:  # pylint: disable=broad-except  # any failure: this file is bad
                with _UNREADABLE_LOCK:  # the reader's threads may meet the same file at once
                    first = path not in _UNREADABLE
                    _UNREADABLE.add(path)
                if first:
                    _LOG.warning("skipping corrupt image: %s (%s: %s); the next image of the list takes its place",
                                 path, type(err).__name__, err)
        raise ValueError(f"no readable image among the {len(self.paths)} files of the dataset")


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------
def _inter(name, for_eval=False):
    import mindspore.dataset.vision as V
    table = {"bilinear": V.Inter.BILINEAR, "bicubic": V.Inter.PILCUBIC if for_eval else V.Inter.BICUBIC,
             "nearest": V.Inter.NEAREST, "area": V.Inter.AREA}
    return table[name]


def _train_image_ops(config):
    """Encoded bytes -> float32 [3, S, S]: the random resized crop decodes only the crop's rows."""
    import mindspore.dataset.transforms as T
    import mindspore.dataset.vision as V
    from src.autoaugment import build_auto_augment

    size = config.train_image_size
    scale = (config.crop_min, 1.0)
    if config.interpolation == "random":
        crop = T.RandomChoice([V.RandomCropDecodeResize(size, scale=scale, interpolation=_inter(name))
                               for name in ("bilinear", "bicubic")])
    else:
        crop = V.RandomCropDecodeResize(size, scale=scale, interpolation=_inter(config.interpolation))
    ops = [crop]
    if config.hflip > 0:
        ops.append(V.RandomHorizontalFlip(prob=config.hflip))
    augment = build_auto_augment(config.autoaugment, config.randaugment, V.Inter.BILINEAR)
    ops += augment
    if not augment and config.color_jitter > 0:
        cj = config.color_jitter
        ops.append(V.RandomColorAdjust(brightness=cj, contrast=cj, saturation=cj))
    # transposing uint8 before normalising moves a quarter of the bytes
    ops += [V.HWC2CHW(), V.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, is_hwc=False)]
    if config.reprob > 0:
        ops.append(V.RandomErasing(prob=config.reprob, value="random"))
    return ops


def eval_resize_size(config):
    """Short side of the evaluation resize: int(eval_image_size / crop_pct)."""
    return int(config.eval_image_size / config.crop_pct)


def eval_interpolation(config):
    """The interpolation of the evaluation resize: ``eval_interpolation``, else ``interpolation`` (bicubic
    when that is random)."""
    name = config.eval_interpolation or config.interpolation
    return "bicubic" if name == "random" else name


def _eval_image_ops(config):
    """Encoded bytes -> float32 [3, S, S]: decode, resize the short side, centre-crop, normalise."""
    import mindspore.dataset.vision as V
    name = eval_interpolation(config)
    return [V.Decode(), V.Resize(eval_resize_size(config), interpolation=_inter(name, for_eval=True)),
            V.CenterCrop(config.eval_image_size), V.HWC2CHW(),
            V.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, is_hwc=False)]


def eval_transform(config):
    """The evaluation pipeline's per-image operations as one callable: encoded bytes -> float32 [3, S, S]."""
    import mindspore.dataset.transforms as T
    return T.Compose(_eval_image_ops(config))


def decode_for_eval(path, transform):
    """One image file -> float32 [3, S, S] preprocessed by ``transform`` (``eval_transform(config)``), exactly
    as the evaluation pipeline does it. Raises ValueError with the reason when the file cannot be decoded.
    """
    try:
        data = _read_encoded(path)
    except Exception as err:  # pylint: disable=broad-except  # any failure: this file is bad
        raise ValueError(f"{type(err).__name__}: {err}") from None
    try:
        return np.asarray(transform(data), dtype=np.float32)
    except Exception as err:  # pylint: disable=broad-except  # any decoder error: this file is bad
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{type(err).__name__}: {message}") from None


class _SoftTargets:
    """``per_batch_map`` of the training batch: int labels [B] -> float32 [B, class_num] one-hot targets,
    label-smoothed as timm (``smoothing / class_num`` everywhere, plus ``1 - smoothing`` on the label).

    One numpy call per batch instead of a per-image map stage (a few percent of the pipeline's CPU).
    """

    def __init__(self, class_num, smoothing):
        self.class_num = int(class_num)
        self.smoothing = float(smoothing)

    def __call__(self, labels, _batch_info):
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        targets = np.full((labels.size, self.class_num), self.smoothing / self.class_num, dtype=np.float32)
        targets[np.arange(labels.size), labels] += 1.0 - self.smoothing
        return (targets,)


def _mix_op(config):
    """MixUp / CutMix on batched (image NCHW, soft label) or None."""
    import mindspore.dataset.transforms as T
    import mindspore.dataset.vision as V
    choices = []
    if config.mixup > 0 and config.cutmix > 0:
        cut = int(round(config.mixup_switch_prob * 20))
        choices = [V.MixUpBatch(alpha=config.mixup)] * (20 - cut) + \
                  [V.CutMixBatch(V.ImageBatchFormat.NCHW, alpha=config.cutmix, prob=1.0)] * cut
        choices = choices or [V.MixUpBatch(alpha=config.mixup)]
    elif config.mixup > 0:
        choices = [V.MixUpBatch(alpha=config.mixup)]
    elif config.cutmix > 0:
        choices = [V.CutMixBatch(V.ImageBatchFormat.NCHW, alpha=config.cutmix, prob=1.0)]
    if not choices or config.mixup_prob <= 0:
        return None
    distinct = {id(c): c for c in choices}
    op = choices[0] if len(distinct) == 1 else T.RandomChoice(choices)
    if config.mixup_prob < 1.0:
        op = T.RandomApply([op], prob=config.mixup_prob)
    return op


def _workers(requested):
    """Parallel workers of a pipeline stage: ``requested``, capped at this process's share of the cores.

    A process pinned to a set of cores (msrun's binding, taskset) has that set; an unpinned one shares
    the machine with the other processes of its server (8 ranks on 192 cores: 24 each).
    """
    cores = available_cores()
    if cores >= (os.cpu_count() or cores):
        cores //= get_local_rank_size()
    return max(1, min(int(requested), cores))


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def create_dataset(config, training, rank_id=0, rank_size=1):
    """Build the training or evaluation pipeline. Returns (dataset, class_names).

    Args:
        config: a ``Config`` (``src.model_utils.config``).
        training: True for the augmented, shuffled, soft-label training pipeline; False for evaluation.
        rank_id, rank_size: this process's shard of the data (``0 <= rank_id < rank_size``).

    See the module docstring for columns, dtypes and the label -1 padding convention.
    """
    import mindspore.dataset as ds

    rank_id, rank_size = int(rank_id), int(rank_size)
    if rank_size < 1 or not 0 <= rank_id < rank_size:
        raise ValueError(f"rank_id {rank_id} is not a valid shard of rank_size {rank_size}")

    folder = resolve_train_folder(config) if training else resolve_eval_folder(config)
    manifest = _load(folder, bool(config.verify_images), config, report=rank_id == 0)
    class_names = manifest.class_names
    if training and len(class_names) < 2:
        raise ValueError(f"the training folder {folder} has one class folder ({class_names[0]}): a classifier "
                         "learns nothing from one class (loss 0, accuracy 1.0); add a folder per class")
    # before class_num: a class that only one of the two folders has is the mistake to name
    _check_same_classes(config, folder, class_names, training)
    if len(class_names) != config.class_num:
        raise ValueError(f"class_num is {config.class_num} in the config but {folder} has "
                         f"{len(class_names)} class folders; set class_num to {len(class_names)}")
    chosen = _select(manifest, config.dataset_fraction)

    ds.config.set_seed(config.seed)
    # a safety net for a file changed after its check: never drop a sample (that would shorten the epoch)
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
    workers = _workers(config.train_num_workers if training else config.eval_num_workers)

    if training:
        per_shard = math.ceil(len(chosen) / rank_size)
        if per_shard < config.batch_size:
            raise ValueError(f"training folder {folder} has {len(chosen)} usable images, {per_shard} per "
                             f"rank, fewer than batch_size {config.batch_size}; lower batch_size")
        sampler = ds.DistributedSampler(num_shards=rank_size, shard_id=rank_id, shuffle=True)
        if manifest.view:
            sampler.add_child(ds.SubsetSampler(chosen))  # never the padding image
            data = ds.ImageFolderDataset(manifest.view, sampler=sampler, num_parallel_workers=workers,
                                         class_indexing=manifest.view_class_indexing)
        else:
            reader = _CheckedReader([manifest.paths[i] for i in chosen], [manifest.labels[i] for i in chosen])
            data = ds.GeneratorDataset(reader, column_names=["image", "label"], sampler=sampler,
                                       num_parallel_workers=workers, python_multiprocessing=False)
        data = data.map(operations=_train_image_ops(config), input_columns="image", num_parallel_workers=workers)
        smoothing = config.label_smooth_factor if config.use_label_smooth else 0.0
        data = data.batch(config.batch_size, drop_remainder=True, num_parallel_workers=workers,
                          per_batch_map=_SoftTargets(config.class_num, smoothing), input_columns=["label"])
        mix = _mix_op(config)
        if mix is not None:
            data = data.map(operations=mix, input_columns=["image", "label"], num_parallel_workers=workers)
        return data, class_names

    # evaluation: fixed, disjoint shards; pad to equal length with label -1
    total = len(chosen)
    mine = [chosen[i] for i in range(rank_id, total, rank_size)]
    pad = math.ceil(total / rank_size) - len(mine)
    if manifest.view:
        pad_index = len(manifest.paths)  # the view's padding image
        data = ds.ImageFolderDataset(manifest.view, sampler=ds.SubsetSampler(mine + [pad_index] * pad),
                                     num_parallel_workers=workers, class_indexing=manifest.view_class_indexing)
    else:
        reader = _CheckedReader([manifest.paths[i] for i in mine], [manifest.labels[i] for i in mine], pad=pad)
        data = ds.GeneratorDataset(reader, column_names=["image", "label"], shuffle=False,
                                   num_parallel_workers=workers, python_multiprocessing=False)
    data = data.map(operations=_eval_image_ops(config), input_columns="image", num_parallel_workers=workers)
    data = data.batch(config.eval_batch_size, drop_remainder=False, num_parallel_workers=workers)
    return data, class_names


def _check_same_classes(config, folder, class_names, training):
    """The training and evaluation folders must have the same classes (when both are there; for a training
    folder, when the run evaluates)."""
    try:
        if training:
            if config.eval_interval <= 0 or not config.eval_path:
                return
            train_folder, eval_folder, train_names = folder, resolve_eval_folder(config), class_names
            eval_names = class_folders(eval_folder)
        else:
            train_folder, eval_folder, eval_names = resolve_train_folder(config), folder, class_names
            train_names = class_folders(train_folder)
    except ValueError:  # the other folder is missing or has no classes: nothing to compare
        return
    if os.path.abspath(train_folder) == os.path.abspath(eval_folder):
        return
    if train_names != eval_names:
        only_eval = sorted(set(eval_names) - set(train_names))
        only_train = sorted(set(train_names) - set(eval_names))
        what = []
        if only_eval:
            what.append(f"class folder(s) {_first_names(only_eval)} only in the evaluation folder {eval_folder}")
        if only_train:
            what.append(f"class folder(s) {_first_names(only_train)} only in the training folder {train_folder}")
        raise ValueError(f"the evaluation and training folders must have the same classes, but there are "
                         f"{' and '.join(what)}: labels would not match; give both folders the same classes")
