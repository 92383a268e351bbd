"""ImageFolder input pipelines for training and evaluation (mindspore.dataset).

    >>> from src.dataset import create_dataset
    >>> train_ds, class_names = create_dataset(config, training=True, rank_id=0, rank_size=1)
    >>> eval_ds, _ = create_dataset(config, training=False)

Layout: ``<dataset_path>/train/<class>/<image>`` for training, ``eval_path/<class>/<image>`` for
evaluation (``eval_path`` defaults to ``<dataset_path>/val``). Class names are the sorted folder
names; label ``i`` is ``class_names[i]``. Images may be JPEG (RGB, grayscale or CMYK), PNG (any
mode), BMP, TIFF, WebP, PPM/PGM; extensions are matched case-insensitively; every image is
decoded to 3-channel RGB.

Output columns (both pipelines, batched):

* ``image``: float32 [B, 3, H, W], normalised with the ImageNet mean/std.
* ``label``, training: float32 [B, class_num] soft targets; every row sums to 1 (one-hot,
  label-smoothed when ``use_label_smooth``, mixed by MixUp/CutMix when ``mixup``/``cutmix`` > 0).
  Training batches are full (``drop_remainder``).
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

Corrupt files: with ``verify_images`` (default) every file is checked with PIL before the pipeline
is built and unreadable ones are left out with a warning ``skipping corrupt image: PATH (reason)``
on the ``src.dataset`` logger; the scan also routes files MindSpore's decoder gets wrong (16-bit PNG,
WebP, ...) through PIL, which ``verify_images: false`` decides from the extension alone. Errors that only show up when decoding are skipped by MindSpore
(``ErrorSamplesMode.SKIP``); on several ranks that would make shard lengths differ, so the pre-scan
is what keeps distributed runs safe.

Mistakes in the data raise one ``ValueError`` naming the folder: a missing folder, a folder
without class sub-folders, an empty class folder, a class count different from ``class_num``,
too few training images for one batch.
"""
import io
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["create_dataset", "scan_image_folder", "resolve_train_folder", "resolve_eval_folder",
           "IMG_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD"]

_LOG = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Formats and modes that MindSpore's C++ Decode turns into correct 3-channel RGB. Anything else is
# decoded by PIL in the reader and handed on as PNG bytes.
_NATIVE = {"JPEG": {"L", "RGB", "CMYK", "YCbCr"}, "PNG": {"1", "L", "LA", "P", "PA", "RGB", "RGBA"}}
_BAD_BYTES = np.frombuffer(b"corrupt image", dtype=np.uint8)  # makes Decode fail -> sample skipped


# ---------------------------------------------------------------------------------------------
# Folder scanning
# ---------------------------------------------------------------------------------------------
def _list_images(class_dir):
    names = []
    with os.scandir(class_dir) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if os.path.splitext(entry.name)[1].lower() in IMG_EXTENSIONS and entry.is_file():
                names.append(entry.name)
    return [os.path.join(class_dir, n) for n in sorted(names)]


def _jpeg_has_end_marker(path):
    """True when the file ends with the JPEG EOI marker (trailing zero padding allowed)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64))
        tail = fh.read().rstrip(b"\x00\r\n ")
    return tail.endswith(b"\xff\xd9")


def _full_load(path):
    with Image.open(path) as img:
        img.load()


def check_image(path):
    """Check one file cheaply. Returns (ok, needs_pil, reason).

    ``needs_pil``: the file decodes with PIL but not (reliably) with MindSpore's Decode, e.g. 16-bit
    PNG or WebP; the reader converts it. A JPEG without an end marker is fully decoded here
    (truncated JPEGs can crash the native decoder).
    """
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            img.verify()
        needs_pil = fmt not in _NATIVE or mode not in _NATIVE[fmt]
        if fmt == "JPEG" and not _jpeg_has_end_marker(path):
            _full_load(path)
            needs_pil = True
        elif needs_pil:
            _full_load(path)
        return True, needs_pil, ""
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        return False, False, f"{type(err).__name__}: {err}"
    except Exception as err:  # pylint: disable=broad-except  # any decoder failure means unusable
        return False, False, f"{type(err).__name__}: {err}"


def _class_dirs(folder):
    if not os.path.isdir(folder):
        raise ValueError(f"dataset folder not found: {folder} "
                         f"(expected an ImageFolder: {os.path.join(folder, '<class>', '<image>')})")
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ValueError(f"dataset folder {folder} has no class folders "
                         f"(expected {os.path.join(folder, '<class>', '<image>')})")
    return names


def _subset(paths, fraction):
    """A fixed per-class subset: the same files for the same fraction, whatever the seed."""
    if fraction >= 1.0 or not paths:
        return paths
    keep = max(1, int(round(len(paths) * fraction)))
    order = np.random.default_rng(0).permutation(len(paths))[:keep]
    return [paths[i] for i in sorted(order)]


def scan_image_folder(folder, verify=True, fraction=1.0, workers=None):
    """List an ImageFolder. Returns (class_names, paths, labels, needs_pil).

    Raises ValueError for a missing folder, no class folders or an empty class folder; corrupt files
    (when ``verify``) are left out with a warning naming each one.
    """
    class_names = _class_dirs(folder)
    per_class = []
    empty = []
    for name in class_names:
        files = _list_images(os.path.join(folder, name))
        if not files:
            empty.append(os.path.join(folder, name))
        per_class.append(_subset(files, fraction))
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(f"empty class folder: {shown} (no {'/'.join(IMG_EXTENSIONS)} images); "
                         "remove it or add images")
    paths = [p for files in per_class for p in files]
    labels = [i for i, files in enumerate(per_class) for _ in files]
    if verify:
        workers = workers or min(16, 4 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check_image, paths, chunksize=64))
        keep_paths, keep_labels, needs_pil, bad = [], [], [], 0
        for path, label, (ok, pil, reason) in zip(paths, labels, results):
            if ok:
                keep_paths.append(path)
                keep_labels.append(label)
                needs_pil.append(pil)
            else:
                bad += 1
                _LOG.warning("skipping corrupt image: %s (%s)", path, reason)
        if bad:
            _LOG.warning("%d corrupt image(s) skipped in %s", bad, folder)
        left = set(keep_labels)
        unreadable = [os.path.join(folder, n) for i, n in enumerate(class_names) if i not in left]
        if unreadable:
            raise ValueError(f"class folder without a readable image: {', '.join(unreadable[:5])}")
        paths, labels = keep_paths, keep_labels
    else:
        needs_pil = [os.path.splitext(p)[1].lower() not in (".jpg", ".jpeg", ".png") for p in paths]
    return class_names, paths, labels, needs_pil


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
            if _class_dirs(root):
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
# Reader
# ---------------------------------------------------------------------------------------------
def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


class _ImageFileReader:
    """Random-access source: index -> (encoded image bytes uint8 [n], label int32 [])."""

    def __init__(self, paths, labels, needs_pil, pad=0, pad_size=32):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.needs_pil = list(needs_pil)
        self.pad = int(pad)
        self.pad_bytes = _png_bytes(Image.new("RGB", (pad_size, pad_size))) if pad else None

    def __len__(self):
        return len(self.paths) + self.pad

    def __getitem__(self, index):
        index = int(index)
        if index >= len(self.paths):
            return self.pad_bytes, np.array(-1, dtype=np.int32)
        path = self.paths[index]
        label = self.labels[index]
        try:
            if self.needs_pil[index]:
                with Image.open(path) as img:
                    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                        arr = np.asarray(img, dtype=np.float64)
                        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
                    data = _png_bytes(img.convert("RGB"))
            else:
                data = np.fromfile(path, dtype=np.uint8)
        except Exception as err:  # pylint: disable=broad-except  # the Decode op then skips it
            _LOG.warning("skipping corrupt image: %s (%s: %s)", path, type(err).__name__, err)
            data = _BAD_BYTES
        return data, np.array(label, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------
def _inter(name, for_eval=False):
    import mindspore.dataset.vision as V
    table = {"bilinear": V.Inter.BILINEAR, "bicubic": V.Inter.PILCUBIC if for_eval else V.Inter.BICUBIC,
             "nearest": V.Inter.NEAREST, "area": V.Inter.AREA}
    return table[name]


def _train_image_ops(config):
    import mindspore.dataset.transforms as T
    import mindspore.dataset.vision as V
    from src.autoaugment import build_auto_augment

    size = config.train_image_size
    scale = (config.crop_min, 1.0)
    if config.interpolation == "random":
        crop = T.RandomChoice([V.RandomResizedCrop(size, scale=scale, interpolation=_inter("bilinear")),
                               V.RandomResizedCrop(size, scale=scale, interpolation=_inter("bicubic"))])
    else:
        crop = V.RandomResizedCrop(size, scale=scale, interpolation=_inter(config.interpolation))
    ops = [V.Decode(), crop]
    if config.hflip > 0:
        ops.append(V.RandomHorizontalFlip(prob=config.hflip))
    augment = build_auto_augment(config.autoaugment, config.randaugment, V.Inter.BILINEAR)
    ops += augment
    if not augment and config.color_jitter > 0:
        cj = config.color_jitter
        ops.append(V.RandomColorAdjust(brightness=cj, contrast=cj, saturation=cj))
    ops += [V.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), V.HWC2CHW()]
    if config.reprob > 0:
        ops.append(V.RandomErasing(prob=config.reprob, value="random"))
    return ops


def eval_resize_size(config):
    """Short side of the evaluation resize: int(eval_image_size / crop_pct)."""
    return int(config.eval_image_size / config.crop_pct)


def _eval_image_ops(config):
    import mindspore.dataset.vision as V
    name = config.eval_interpolation or config.interpolation
    if name == "random":
        name = "bicubic"
    return [V.Decode(), V.Resize(eval_resize_size(config), interpolation=_inter(name, for_eval=True)),
            V.CenterCrop(config.eval_image_size), V.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            V.HWC2CHW()]


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
    return max(1, min(int(requested), os.cpu_count() or 1))


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
    import mindspore as ms
    import mindspore.dataset as ds
    import mindspore.dataset.transforms as T

    rank_id, rank_size = int(rank_id), int(rank_size)
    if rank_size < 1 or not 0 <= rank_id < rank_size:
        raise ValueError(f"rank_id {rank_id} is not a valid shard of rank_size {rank_size}")

    folder = resolve_train_folder(config) if training else resolve_eval_folder(config)
    class_names, paths, labels, needs_pil = scan_image_folder(
        folder, verify=config.verify_images, fraction=config.dataset_fraction)
    if len(class_names) != config.class_num:
        raise ValueError(f"class_num is {config.class_num} in the config but {folder} has "
                         f"{len(class_names)} class folders; set class_num to {len(class_names)}")
    if not training:
        _check_same_classes(config, folder, class_names)

    ds.config.set_seed(config.seed)
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.SKIP)

    if training:
        reader = _ImageFileReader(paths, labels, needs_pil)
        per_shard = math.ceil(len(reader) / rank_size)
        if per_shard < config.batch_size:
            raise ValueError(f"training folder {folder} has {len(reader)} usable images, {per_shard} per "
                             f"rank, fewer than batch_size {config.batch_size}; lower batch_size")
        sampler = ds.DistributedSampler(num_shards=rank_size, shard_id=rank_id, shuffle=True)
        workers = _workers(config.train_num_workers)
        data = ds.GeneratorDataset(reader, column_names=["image", "label"], sampler=sampler,
                                   num_parallel_workers=min(workers, 4), python_multiprocessing=False)
        data = data.map(operations=_train_image_ops(config), input_columns="image",
                        num_parallel_workers=workers)
        smoothing = config.label_smooth_factor if config.use_label_smooth else 0.0
        data = data.map(operations=[T.OneHot(config.class_num, smoothing_rate=float(smoothing)),
                                    T.TypeCast(ms.float32)], input_columns="label")
        data = data.batch(config.batch_size, drop_remainder=True)
        mix = _mix_op(config)
        if mix is not None:
            data = data.map(operations=mix, input_columns=["image", "label"], num_parallel_workers=workers)
        return data, class_names

    # evaluation: fixed, disjoint shards; pad to equal length with label -1
    total = len(paths)
    padded_total = math.ceil(total / rank_size) * rank_size
    mine = list(range(rank_id, padded_total, rank_size))
    real = [i for i in mine if i < total]
    reader = _ImageFileReader([paths[i] for i in real], [labels[i] for i in real],
                              [needs_pil[i] for i in real], pad=len(mine) - len(real))
    workers = _workers(config.eval_num_workers)
    data = ds.GeneratorDataset(reader, column_names=["image", "label"], shuffle=False,
                               num_parallel_workers=min(workers, 4), python_multiprocessing=False)
    data = data.map(operations=_eval_image_ops(config), input_columns="image", num_parallel_workers=workers)
    data = data.map(operations=T.TypeCast(ms.int32), input_columns="label")
    data = data.batch(config.eval_batch_size, drop_remainder=False)
    return data, class_names


def _check_same_classes(config, eval_folder, class_names):
    """The evaluation classes must be the training classes when a training folder is there."""
    try:
        train_folder = resolve_train_folder(config)
    except ValueError:
        return
    if os.path.abspath(train_folder) == os.path.abspath(eval_folder):
        return
    try:
        train_names = _class_dirs(train_folder)
    except ValueError:
        return
    if train_names != class_names:
        only_eval = sorted(set(class_names) - set(train_names))[:5]
        only_train = sorted(set(train_names) - set(class_names))[:5]
        raise ValueError(f"the class folders of {eval_folder} differ from those of {train_folder} "
                         f"(only in eval: {only_eval}, only in train: {only_train}); labels would not match")
