"""Input pipelines (src/dataset.py), the image manifest (src/image_manifest.py), RandAugment parsing
(src/autoaugment.py), digits preparation."""
import importlib.util
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import src.image_manifest as image_manifest
from src.autoaugment import _magnitude_table, build_auto_augment, parse_rand_augment
from src.dataset import (IMAGENET_MEAN, IMAGENET_STD, _jpeg_structure_ok, _workers, create_dataset, decode_for_eval,
                         eval_resize_size, eval_transform, scan_image_folder)
from src.locks import create_lock, owner_record
from src.logging import get_logger
from src.model_utils.config import make_config

pytestmark = pytest.mark.unit

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(root, **overrides):
    values = dict(dataset_path=str(root), class_num=2, train_image_size=SIZE, eval_image_size=SIZE,
                  batch_size=4, eval_batch_size=3, train_num_workers=2, eval_num_workers=2, seed=7)
    values.update(overrides)
    return make_config(values)


def _batches(data):
    return list(data.create_dict_iterator(output_numpy=True, num_epochs=1))


def _indices(batch):
    """Running index of "index"-content images: the red value (solid colour survives crop/resize)."""
    red = batch["image"][:, 0].mean(axis=(1, 2)) * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return np.rint(red).astype(int).tolist()


# ---------------------------------------------------------------------------------------- training
def test_training_columns_shapes_and_soft_targets(image_folder_factory):
    root = image_folder_factory(per_class=[7, 6], size=(40, 48))
    config = _config(root, mixup=0.8, cutmix=1.0, randaugment="rand-m9-mstd0.5-inc1", reprob=0.25,
                     interpolation="random", use_label_smooth=True, label_smooth_factor=0.1)
    data, class_names = create_dataset(config, training=True)
    assert class_names == ["class_0", "class_1"]
    batches = _batches(data)
    assert len(batches) == 13 // 4 == data.get_dataset_size()  # drop_remainder
    for batch in batches:
        assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (4, 2) and batch["label"].dtype == np.float32
        np.testing.assert_allclose(batch["label"].sum(axis=1), 1.0, atol=1e-5)
        assert batch["label"].min() >= 0.05 - 1e-6  # smoothing floor survives mixing


def test_training_one_hot_with_label_smoothing(image_folder_factory):
    root = image_folder_factory(per_class=4, classes=3)
    config = _config(root, class_num=3, autoaugment=True, use_label_smooth=True, label_smooth_factor=0.3)
    batch = _batches(create_dataset(config, training=True)[0])[0]
    label = batch["label"]
    assert label.shape == (4, 3)
    np.testing.assert_allclose(np.sort(label, axis=1), [[0.1, 0.1, 0.8]] * 4, atol=1e-6)
    plain = _batches(create_dataset(_config(root, class_num=3, use_label_smooth=False), training=True)[0])[0]
    assert set(np.unique(plain["label"])) == {0.0, 1.0}


@pytest.mark.parametrize("overrides", [
    dict(mixup=0.4, mixup_prob=0.5),
    dict(cutmix=1.0, interpolation="bicubic"),
    dict(mixup=0.8, cutmix=1.0, mixup_switch_prob=1.0, interpolation="nearest"),
    dict(color_jitter=0.4, interpolation="area", hflip=0.0, use_label_smooth=False),
    dict(randaugment="rand-n1-m5-mstd101", reprob=1.0),
], ids=["mixup-half", "cutmix", "switch-all", "jitter", "rand-uniform"])
def test_training_augmentation_variants(image_folder_factory, overrides):
    root = image_folder_factory(per_class=4, size=(36, 36))
    batch = _batches(create_dataset(_config(root, **overrides), training=True)[0])[0]
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and np.isfinite(batch["image"]).all()
    np.testing.assert_allclose(batch["label"].sum(axis=1), 1.0, atol=1e-5)


def test_training_shards_are_disjoint_and_cover_the_set(image_folder_factory):
    root = image_folder_factory(per_class=8, content="index", splits=("train",))
    seen = []
    for rank in range(2):
        config = _config(root, batch_size=2, hflip=0.0, use_label_smooth=False, interpolation="bilinear")
        data, _ = create_dataset(config, training=True, rank_id=rank, rank_size=2)
        batches = _batches(data)
        assert len(batches) == 4
        got = [i for b in batches for i in _indices(b)]
        labels = [int(np.argmax(row)) for b in batches for row in b["label"]]
        assert labels == [int(i >= 8) for i in got]  # label follows the image
        seen.append(got)
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(16))
    # same seed -> same order
    again, _ = create_dataset(_config(root, batch_size=2, hflip=0.0, interpolation="bilinear"), training=True,
                              rank_id=0, rank_size=2)
    assert [i for b in _batches(again) for i in _indices(b)] == seen[0]


def test_original_port_layout_dataset_path_is_the_train_folder(image_folder_factory):
    root = image_folder_factory(per_class=4, splits=())  # root/<class>/*
    data, names = create_dataset(_config(root), training=True)
    assert names == ["class_0", "class_1"] and data.get_dataset_size() == 2


def test_too_few_images_for_a_batch(image_folder_factory):
    root = image_folder_factory(per_class=2, splits=("train",))
    with pytest.raises(ValueError, match="fewer than batch_size 8"):
        create_dataset(_config(root, batch_size=8), training=True)


# -------------------------------------------------------------------------------------- evaluation
def test_evaluation_counts_every_image_once(image_folder_factory):
    root = image_folder_factory(per_class=[4, 3], content="index", splits=("val",), size=(50, 40))
    config = _config(root, eval_batch_size=3)
    data, _ = create_dataset(config, training=False)
    batches = _batches(data)
    assert [len(b["label"]) for b in batches] == [3, 3, 1]  # nothing dropped
    for b in batches:
        assert b["image"].dtype == np.float32 and b["image"].shape[1:] == (3, SIZE, SIZE)
        assert b["label"].dtype == np.int32
    assert [i for b in batches for i in _indices(b)] == list(range(7))  # sorted order, no shuffle
    assert [int(x) for b in batches for x in b["label"]] == [0, 0, 0, 0, 1, 1, 1]
    # normalisation: a solid colour (r, g, b) maps to (value - mean) / std
    first = batches[0]["image"][0]
    np.testing.assert_allclose(first[2], (128 - IMAGENET_MEAN[2]) / IMAGENET_STD[2], atol=1e-4)


def test_multi_rank_evaluation_pads_with_label_minus_one(image_folder_factory):
    root = image_folder_factory(per_class=[4, 3], content="index", splits=("val",))
    real, padded, sizes = [], 0, []
    for rank in range(2):
        data, _ = create_dataset(_config(root, eval_batch_size=2), training=False, rank_id=rank, rank_size=2)
        batches = _batches(data)
        sizes.append([len(b["label"]) for b in batches])
        for b in batches:
            for index, label in zip(_indices(b), b["label"]):
                if label < 0:
                    padded += 1
                else:
                    real.append(index)
                    assert label == int(index >= 4)
    assert sizes[0] == sizes[1] == [2, 2]  # equal shard lengths: 7 images + 1 pad
    assert padded == 1
    assert sorted(real) == list(range(7))  # every image exactly once


def test_eval_resize_follows_crop_pct(image_folder_factory):
    config = make_config({"eval_image_size": 224, "crop_pct": 0.9})
    assert eval_resize_size(config) == 248
    assert eval_resize_size(config.copy(crop_pct=0.875)) == 256
    root = image_folder_factory(per_class=2, splits=("val",), size=(60, 45))
    for inter in ("bicubic", "bilinear", ""):
        data, _ = create_dataset(_config(root, crop_pct=0.9, eval_interpolation=inter, interpolation="random"),
                                 training=False)
        assert [b["image"].shape for b in _batches(data)] == [(3, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)]


# ------------------------------------------------------------------------------------- bad input
def _jpeg_bytes(mode="RGB", size=(40, 30)):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.convert(mode).save(buf, "JPEG")
    return buf.getvalue()


def test_corrupt_images_are_skipped_with_a_warning(image_folder_factory, caplog):
    root = image_folder_factory(per_class=3, splits=("val",))
    folder = root / "val" / "class_1"
    (folder / "garbage.jpg").write_bytes(b"not an image at all" * 20)
    (folder / "truncated.jpg").write_bytes(_jpeg_bytes()[:400])
    (folder / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        data, _ = create_dataset(_config(root), training=False)
        labels = [int(x) for b in _batches(data) for x in b["label"]]
    assert labels == [0, 0, 0, 1, 1, 1]
    text = caplog.text
    for name in ("garbage.jpg", "truncated.jpg", "empty.png"):
        assert f"skipping corrupt image: {folder / name}" in text


def test_other_formats_and_modes_decode_to_rgb(image_folder_factory):
    root = image_folder_factory(per_class=1, classes=["a", "b"], splits=("val",))
    folder = root / "val" / "b"
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    rgb.convert("L").save(folder / "gray.JPG", "JPEG")
    rgb.convert("CMYK").save(folder / "cmyk.JPEG", "JPEG")
    rgb.convert("RGBA").save(folder / "alpha.PNG", "PNG")
    rgb.convert("P").save(folder / "palette.png", "PNG")
    Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)).save(folder / "deep.png", "PNG")
    rgb.save(folder / "bitmap.bmp", "BMP")
    rgb.save(folder / "web.WEBP", "WEBP")
    (folder / "notes.txt").write_text("not an image, ignored")
    names, paths, _, needs_pil = scan_image_folder(str(root / "val"))
    assert len(paths) == 9 and not any(p.endswith(".txt") for p in paths)
    assert needs_pil[paths.index(str(folder / "deep.png"))] and not needs_pil[paths.index(str(folder / "gray.JPG"))]
    data, _ = create_dataset(_config(root, eval_batch_size=4), training=False)
    images = np.concatenate([b["image"] for b in _batches(data)])
    assert images.shape == (9, 3, SIZE, SIZE)
    gray = images[1 + sorted(os.listdir(folder)).index("gray.JPG")]
    pixels = gray.transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() < 0.5  # grey stays grey in all 3 channels


def test_missing_folders_and_empty_classes(image_folder_factory, tmp_path):
    with pytest.raises(ValueError, match="dataset folder not found: .*nowhere.*train"):
        create_dataset(_config(tmp_path / "nowhere"), training=True)
    with pytest.raises(ValueError, match="dataset folder not found: .*elsewhere"):
        create_dataset(_config(tmp_path, eval_path=str(tmp_path / "elsewhere")), training=False)
    root = image_folder_factory(per_class=[3, 0], splits=("train",))
    with pytest.raises(ValueError, match="empty class folder: .*class_1"):
        create_dataset(_config(root), training=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match="has no class folders"):
        create_dataset(_config(tmp_path), training=False)


def test_class_count_must_match_class_num(image_folder_factory):
    root = image_folder_factory(per_class=2, classes=3)
    with pytest.raises(ValueError, match="class_num is 5 .* has 3 class folders"):
        create_dataset(_config(root, class_num=5), training=False)


def test_eval_classes_must_match_training_classes(image_folder_factory):
    root = image_folder_factory(per_class=2, classes=["cat", "dog"], splits=("train",))
    image_folder_factory(per_class=2, classes=["cat", "cow"], splits=("val",), root=root)
    with pytest.raises(ValueError, match=r"class folder\(s\) cow only in the evaluation folder .* and class "
                                         r"folder\(s\) dog only in the training folder"):
        create_dataset(_config(root), training=False)


def test_bad_rank_arguments(image_folder_factory):
    root = image_folder_factory(per_class=2)
    with pytest.raises(ValueError, match="rank_id 2"):
        create_dataset(_config(root), training=False, rank_id=2, rank_size=2)


# ------------------------------------------------------------------------------------ small knobs
def test_dataset_fraction_takes_a_fixed_per_class_subset(image_folder_factory):
    root = image_folder_factory(per_class=[10, 6], splits=("val",))
    _, paths, labels, _ = scan_image_folder(str(root / "val"), verify=False, fraction=0.5)
    assert np.bincount(labels).tolist() == [5, 3]
    assert scan_image_folder(str(root / "val"), verify=False, fraction=0.5)[1] == paths
    assert np.bincount(scan_image_folder(str(root / "val"), verify=False, fraction=0.01)[2]).tolist() == [1, 1]
    data, _ = create_dataset(_config(root, dataset_fraction=0.5, eval_batch_size=16), training=False)
    assert sum(len(b["label"]) for b in _batches(data)) == 8


def test_worker_counts_are_clamped():
    assert _workers(10_000) == os.cpu_count()
    assert _workers(1) == 1 and _workers(0) == 1


def test_rand_augment_parsing():
    spec = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std, spec.increasing) == (2, 9.0, 0.5, True)
    assert parse_rand_augment("rand-n3-m7").num_ops == 3
    for bad, part in (("rand-q4", "q4"), ("rand-m11", "magnitude"), ("rand-n0", "n must"), ("augmix-m3", "rand")):
        with pytest.raises(ValueError, match=part):
            parse_rand_augment(bad)
    table = _magnitude_table(spec)
    assert max(table, key=lambda t: t[1])[0] == 9.0 and all(0 <= m <= 10 for m, _ in table)
    assert _magnitude_table(parse_rand_augment("rand-m9")) == [(9.0, 1)]
    assert len(build_auto_augment(randaugment="rand-m9-mstd0.5-inc1")) == 1
    assert build_auto_augment() == []


# -------------------------------------------------------------------------------------------- digits
def test_digits_preparation_counts_and_split(digits_root):
    counts = {}
    for split in ("train", "val"):
        counts[split] = {c: len(os.listdir(digits_root / split / c)) for c in sorted(os.listdir(digits_root / split))}
        assert sorted(counts[split]) == [str(d) for d in range(10)]
    total = sum(counts["train"].values()) + sum(counts["val"].values())
    assert total == 1797
    assert sum(counts["val"].values()) == 359 and sum(counts["train"].values()) == 1438
    for c in counts["train"]:  # stratified: 20 % of every class, rounded
        n = counts["train"][c] + counts["val"][c]
        assert counts["val"][c] == round(0.2 * n)
    sample = Image.open(next((digits_root / "val" / "3").iterdir()))
    assert sample.size == (64, 64) and sample.mode == "RGB" and sample.format == "PNG"


def test_digits_preparation_is_idempotent(digits_root, capsys):
    before = {p: p.stat().st_mtime_ns for p in (digits_root / "train" / "0").iterdir()}
    counts = load_tool("prepare_digits").prepare_digits(str(digits_root), size=64)
    out = capsys.readouterr().out
    assert "nothing written" in out and "train: 1438 images" in out and "val: 359 images" in out
    assert sum(counts["val"].values()) == 359
    assert {p: p.stat().st_mtime_ns for p in (digits_root / "train" / "0").iterdir()} == before


def test_digits_command_line(digits_root):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "prepare_digits.py"), "--output", str(digits_root)],
                            capture_output=True, text=True, check=True, timeout=120)
    assert "train: 1438 images in 10 classes" in result.stdout


def test_digits_pipeline(digits_root):
    config = make_config({"dataset_path": str(digits_root), "class_num": 10, "eval_image_size": SIZE,
                          "eval_batch_size": 100, "eval_num_workers": 2})
    data, names = create_dataset(config, training=False)
    labels = np.concatenate([b["label"] for b in _batches(data)])
    assert names == [str(d) for d in range(10)] and len(labels) == 359
    assert np.bincount(labels).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


# --------------------------------------------------------------------------- awkward files, end to end
def _awkward_folder(image_folder_factory):
    """train/ with 4 good JPEGs per class, and in class_1: every kind of file the pipeline must survive.

    Returns (root, {name: expected "skipping ..." kind or None for files that must decode}).
    """
    root = image_folder_factory(per_class=4, splits=("train",), fmt="JPEG")
    folder = root / "train" / "class_1"
    jpeg = (folder / "img_000.jpg").read_bytes()
    (folder / "header_cut.jpg").write_bytes(jpeg[:300])  # kills MindSpore's native decoder (SIGFPE)
    (folder / "scan_cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpeg").write_bytes(b"not an image" * 40)
    (folder / "broken.jpg").symlink_to(folder / "missing.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    rgb.save(folder / ".hidden.jpg")
    rgb.save(folder / "web.webp", "WEBP")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("L").save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 48)).astype(np.uint16)).save(folder / "deep.png")
    expected = {"header_cut.jpg": "corrupt", "scan_cut.jpg": "corrupt", "empty.png": "corrupt",
                "garbage.jpeg": "corrupt", "broken.jpg": "unreadable", "loop.jpg": "unreadable"}
    return root, folder, expected


def _named(text, path):
    return text.count(f" image: {path} (")


def test_awkward_files_are_named_once_and_skipped(image_folder_factory, caplog):
    root, folder, expected = _awkward_folder(image_folder_factory)
    config = _config(root, batch_size=3, hflip=0.0, interpolation="bilinear")
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        data, _ = create_dataset(config, training=True)
        batches = [b for epoch in range(2) for b in _batches(data)]
    good = 4 + 4 + 5  # class_0, class_1's originals, webp / cmyk / palette / gray / 16-bit png
    assert data.get_dataset_size() == good // 3 and len(batches) == 2 * (good // 3)
    assert all(np.isfinite(b["image"]).all() and b["image"].shape == (3, 3, SIZE, SIZE) for b in batches)
    for name, kind in expected.items():
        assert _named(caplog.text, folder / name) == 1, name
        assert f"skipping {kind} image: {folder / name}" in caplog.text
    assert ".hidden" not in caplog.text and "web.webp" not in caplog.text
    _, paths, _, needs_pil = scan_image_folder(str(root / "train"), report=False)
    assert len(paths) == good and needs_pil[paths.index(str(folder / "web.webp"))]


def test_unverified_folder_keeps_the_planned_steps(image_folder_factory, caplog):
    """verify_images false: nothing checked ahead, nothing crashes, bad files named once and replaced."""
    root, folder, expected = _awkward_folder(image_folder_factory)
    config = _config(root, batch_size=3, hflip=0.0, verify_images=False)
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        data, _ = create_dataset(config, training=True)
        listed = 4 + 4 + 5 + 4  # the four corrupt files are listed (not checked), the links are not
        assert data.get_dataset_size() == listed // 3
        for _ in range(2):
            batches = _batches(data)
            assert len(batches) == listed // 3
            assert all(np.isfinite(b["image"]).all() for b in batches)
        decoded = create_dataset(_config(root, eval_batch_size=50, verify_images=False, eval_path=str(root / "train")),
                                 training=False)[0]
        labels = np.concatenate([b["label"] for b in _batches(decoded)])
    assert len(labels) == listed and (labels >= 0).all()  # every listed file yields one sample
    for name in expected:
        assert _named(caplog.text, folder / name) <= 1, name  # named once per process, however often read
    for name in ("header_cut.jpg", "scan_cut.jpg", "empty.png", "garbage.jpeg", "broken.jpg", "loop.jpg"):
        assert _named(caplog.text, folder / name) == 1, name


def test_jpeg_structure_check_catches_every_truncation():
    jpeg = _jpeg_bytes(size=(64, 48))
    assert _jpeg_structure_ok(jpeg) and _jpeg_structure_ok(jpeg + b"\x00" * 16)
    assert not any(_jpeg_structure_ok(jpeg[:n]) for n in range(0, len(jpeg) - 1, 7))


def test_decode_for_eval(image_folder_factory, tmp_path):
    root = image_folder_factory(per_class=1, splits=("val",), size=(50, 40))
    config = _config(root, eval_image_size=SIZE)
    transform = eval_transform(config)
    image = decode_for_eval(str(root / "val" / "class_0" / "img_000.png"), transform)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == np.float32
    batch = _batches(create_dataset(config, training=False)[0])[0]
    np.testing.assert_allclose(image, batch["image"][0], atol=1e-5)  # the evaluation pipeline's result
    (tmp_path / "cut.jpg").write_bytes(_jpeg_bytes()[:300])
    with pytest.raises(ValueError, match="Truncated|truncated"):
        decode_for_eval(str(tmp_path / "cut.jpg"), transform)


def test_pipeline_warnings_reach_the_run_log_file(image_folder_factory, tmp_path):
    root = image_folder_factory(per_class=3, splits=("val",))
    (root / "val" / "class_1" / "bad.png").write_bytes(b"")
    logger = get_logger(str(tmp_path / "logs"), rank=0)
    try:
        create_dataset(_config(root), training=False)
    finally:
        logger.close()
    text = Path(logger.log_file).read_text()
    assert text.count(f"skipping corrupt image: {root / 'val' / 'class_1' / 'bad.png'}") == 1
    # other ranks name nothing: rank 0 reads the same manifest
    other = get_logger(str(tmp_path / "logs1"), rank=0)
    try:
        create_dataset(_config(root), training=False, rank_id=1, rank_size=2)
    finally:
        other.close()
    assert "bad.png" not in Path(other.log_file).read_text()


# ------------------------------------------------------------------------------------------- manifest
def _count_checks(monkeypatch):
    calls = []
    real = image_manifest.check_image

    def counting(path):
        calls.append(os.path.basename(path))
        return real(path)
    monkeypatch.setattr(image_manifest, "check_image", counting)
    return calls


def test_manifest_is_reused_and_rescans_only_changed_files(image_folder_factory, monkeypatch):
    root = image_folder_factory(per_class=3, splits=("train",))
    folder = root / "train"
    calls = _count_checks(monkeypatch)
    first = image_manifest.load_manifest(str(folder))
    assert len(calls) == 6 and os.path.isfile(root / ".train.imagecache" / "manifest.json")
    calls.clear()
    again = image_manifest.load_manifest(str(folder))
    assert calls == [] and again.paths == first.paths and again.view == first.view
    kept_link = os.path.join(first.view, "00000", "img_000.png")
    inode = os.lstat(kept_link).st_ino

    Image.new("RGB", (30, 20), (9, 9, 9)).save(folder / "class_0" / "img_001.png")  # changed
    os.utime(folder / "class_0" / "img_001.png", ns=(1, 1))
    Image.new("RGB", (30, 20)).save(folder / "class_1" / "new.png")  # added
    (folder / "class_1" / "img_000.png").unlink()  # removed
    (folder / "class_1" / "img_002.png").write_bytes(b"broken now")  # became corrupt
    changed = image_manifest.load_manifest(str(folder))
    assert sorted(calls) == ["img_001.png", "img_002.png", "new.png"]
    names = [os.path.relpath(p, folder) for p in changed.paths]
    assert names == ["class_0/img_000.png", "class_0/img_001.png", "class_0/img_002.png", "class_1/img_001.png",
                     "class_1/new.png"]
    assert [p for p, _ in changed.problems] == [str(folder / "class_1" / "img_002.png")]
    # the view is the new list, in order, and reads natively
    links = sorted(os.listdir(os.path.join(changed.view, "00001")))
    assert [os.readlink(os.path.join(changed.view, "00001", n)) for n in links] == changed.paths[3:]
    assert os.lstat(kept_link).st_ino == inode  # only the links of added / removed files change
    assert not os.path.lexists(os.path.join(first.view, "00001", "img_000.png"))


def test_manifest_goes_to_the_configured_cache_folder(image_folder_factory, tmp_path):
    root = image_folder_factory(per_class=4, splits=("train",))
    cache = tmp_path / "cache"
    data, _ = create_dataset(_config(root, data_cache_path=str(cache)), training=True)
    assert data.get_dataset_size() == 2
    written = list(cache.glob("train-*/manifest.json"))
    assert len(written) == 1 and not (root / ".train.imagecache").exists()


def test_read_only_data_uses_the_fallback_folder(image_folder_factory, tmp_path, monkeypatch):
    root = image_folder_factory(per_class=2, splits=("train",))
    real_access = os.access
    monkeypatch.setattr(image_manifest.os, "access",
                        lambda path, mode: False if ".imagecache" in str(path) else real_access(path, mode))
    manifest = image_manifest.load_manifest(str(root / "train"), fallback_dir=str(tmp_path / "out"))
    assert manifest.view.startswith(str(tmp_path / "out" / "train-"))


def test_one_process_builds_the_others_wait(image_folder_factory, monkeypatch):
    root = image_folder_factory(per_class=5, splits=("train",))
    calls = _count_checks(monkeypatch)
    results = []
    threads = [threading.Thread(target=lambda: results.append(image_manifest.load_manifest(str(root / "train"))))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len({tuple(r.paths) for r in results}) == 1 and len({r.view for r in results}) == 1
    assert len(calls) == 10  # every file checked once, by one builder


def test_a_stale_lock_is_taken_over(image_folder_factory, caplog):
    root = image_folder_factory(per_class=2, splits=("train",))
    cache = Path(image_manifest.cache_folder(str(root / "train")))
    (cache / "build.lock").write_text("host 999999\n")  # names no owner (an older lock format)
    os.utime(cache / "build.lock", (0, 0))  # untouched for ages: its builder died
    with caplog.at_level(logging.INFO, logger="src.image_manifest"):
        assert len(image_manifest.load_manifest(str(root / "train")).paths) == 4
    assert f"taking over {cache / 'build.lock'}: it is untouched for" in caplog.text


def test_a_wait_for_a_live_builder_names_it_and_its_progress(image_folder_factory, caplog):
    root = image_folder_factory(per_class=2, splits=("train",))
    cache = Path(image_manifest.cache_folder(str(root / "train")))
    builder = subprocess.Popen(["sleep", "300"])
    try:
        assert create_lock(str(cache / "build.lock"), owner_record(builder.pid))
        results = []
        with caplog.at_level(logging.INFO, logger="src.image_manifest"):
            progress = image_manifest._Progress(str(root / "train"), str(cache), 1000, 1000, 2, "processes")
            progress.next = 0.0  # report now
            progress.update(250)
            waiter = threading.Thread(target=lambda: results.append(image_manifest.load_manifest(str(root / "train"))))
            waiter.start()
            deadline = time.time() + 30
            while "waiting for" not in caplog.text and time.time() < deadline:
                time.sleep(0.05)
            assert waiter.is_alive() and not results
            builder.kill()
            builder.wait()
            waiter.join(30)
    finally:
        builder.kill()
        builder.wait()
    assert len(results[0].paths) == 4
    text = caplog.text
    assert re.search(r"checked 250/1,000 files \(\d+ files/s, ETA [\dms]+\)", text), text
    assert re.search(rf"waiting for the process that builds it \(host \S+, PID {builder.pid}, started [\d: -]+; "
                     rf"checked 250/1,000 files, ETA [\dms]+; lock {re.escape(str(cache / 'build.lock'))}; waited 0s\)",
                     text), text
    assert f"the process that held it (host {socket.gethostname()}, PID {builder.pid}," in text


def test_a_large_build_checks_in_worker_processes_like_threads(image_folder_factory, tmp_path, monkeypatch, caplog):
    """Worker processes from ``_PROCESS_MIN_FILES`` files on (lowered here): the same verdicts and PNG copies as
    the threads of a small build."""
    root = image_folder_factory(per_class=12, splits=("train",), size=(20, 16), fmt="JPEG")
    folder = root / "train" / "class_1"
    (folder / "bad.jpg").write_bytes(b"no image")
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(folder / "web.webp", "WEBP")
    threads = image_manifest.load_manifest(str(root / "train"), cache_dir=str(tmp_path / "threads"), workers=2)
    monkeypatch.setattr(image_manifest, "_PROCESS_MIN_FILES", 8)
    monkeypatch.setattr(image_manifest, "_CHUNK_FILES", 3)  # 9 tasks, two in flight per worker
    with caplog.at_level(logging.INFO, logger="src.image_manifest"):
        processes = image_manifest.load_manifest(str(root / "train"), cache_dir=str(tmp_path / "processes"),
                                                 workers=2)
    assert "checking 26 files with 2 processes" in caplog.text and "checked 26/26 files in" in caplog.text
    assert processes.paths == threads.paths and processes.needs_pil == threads.needs_pil
    assert processes.problems == threads.problems and [p for p, _ in processes.problems] == [str(folder / "bad.jpg")]
    assert len(list((tmp_path / "processes").glob("train-*/converted/*.png"))) == 1


def test_a_worker_killed_on_a_file_is_one_sentence_naming_the_files(tmp_path):
    pool = image_manifest._Processes(1)
    try:
        pool.submit(0, str(tmp_path), str(tmp_path), [f"c/{i}.jpg" for i in range(7)])
        os.kill(pool.procs[0].pid, signal.SIGSEGV)  # as a decoder crash would (the worker is still starting)
        with pytest.raises(ValueError, match=rf"a process checking the images of {tmp_path} was killed by signal "
                                             rf"{int(signal.SIGSEGV)} on one of c/0.jpg, c/1.jpg, c/2.jpg, c/3.jpg, "
                                             r"c/4.jpg and 2 more: move the file that crashes the decoder out"):
            pool.collect(timeout=30)
    finally:
        pool.close()


def test_files_the_pipeline_does_not_read_are_listed_and_counted(image_folder_factory, caplog):
    root = image_folder_factory(per_class=2, splits=("train",))
    train = root / "train"
    (train / "class_0" / "a.gif").write_bytes(b"GIF89a")
    (train / "class_0" / "b.GIF").write_bytes(b"GIF89a")
    (train / "class_1" / "README").write_text("about")
    (train / "class_1" / "more").mkdir()
    (train / "labels.txt").write_text("class_0\nclass_1")
    (train / "class_1" / ".DS_Store").write_text("hidden: not counted")
    manifest = image_manifest.load_manifest(str(train))
    assert sorted(manifest.ignored) == ["class_0/a.gif", "class_0/b.GIF", "class_1/README", "class_1/more/",
                                        "labels.txt"]
    with caplog.at_level(logging.WARNING, logger="src.dataset"):
        create_dataset(_config(root, eval_path=str(train)), training=False)
        create_dataset(_config(root, eval_path=str(train)), training=False)  # said once per process
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignored")]
    assert lines == [f"ignored 4 file(s) and 1 sub-folder(s) in {train} that the pipeline does not read (.gif: 2, "
                     ".txt: 1, no extension: 1, sub-folder: 1), in class_0/ (2), class_1/ (2), the folder itself (1); "
                     "it reads .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp/.ppm/.pgm files in the class folders"]


# --------------------------------------------------------------------------------------------- shards
def test_training_shards_are_reshuffled_each_epoch_alike_on_all_ranks(image_folder_factory):
    root = image_folder_factory(per_class=[9, 8], content="index", splits=("train",))
    orders = []
    for rank in range(3):
        config = _config(root, batch_size=2, hflip=0.0, use_label_smooth=False, interpolation="bilinear")
        data, _ = create_dataset(config, training=True, rank_id=rank, rank_size=3)
        assert data.get_dataset_size() == 6 // 2  # ceil(17 / 3) = 6 per rank
        iterator = data.create_dict_iterator(output_numpy=True, num_epochs=2)
        orders.append([[i for b in iterator for i in _indices(b)] for _ in range(2)])
    for epoch in range(2):
        shards = [orders[rank][epoch] for rank in range(3)]
        assert [len(s) for s in shards] == [6, 6, 6]
        union = [i for s in shards for i in s]
        assert sorted(set(union)) == list(range(17)) and len(union) - len(set(union)) == 1  # one repeat pads
    assert orders[0][0] != orders[0][1]  # reshuffled
    again = create_dataset(_config(root, batch_size=2, hflip=0.0, interpolation="bilinear"), training=True,
                           rank_id=0, rank_size=3)[0].create_dict_iterator(output_numpy=True, num_epochs=2)
    assert [[i for b in again for i in _indices(b)] for _ in range(2)] == orders[0]  # same seed, same orders


@pytest.mark.parametrize("rank_size", [3, 4])
def test_evaluation_counts_every_image_once_on_any_rank_count(image_folder_factory, rank_size):
    root = image_folder_factory(per_class=[4, 3], content="index", splits=("val",))
    real, lengths = [], set()
    for rank in range(rank_size):
        data, _ = create_dataset(_config(root, eval_batch_size=2), training=False, rank_id=rank, rank_size=rank_size)
        batches = _batches(data)
        lengths.add(sum(len(b["label"]) for b in batches))
        real += [i for b in batches for i, label in zip(_indices(b), b["label"]) if label >= 0]
    assert len(lengths) == 1 and sorted(real) == list(range(7))


def test_workers_share_the_cores_of_a_server(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 192)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(192)))
    monkeypatch.setenv("RANK_SIZE", "8")
    assert _workers(8) == 8 and _workers(64) == 24  # 192 cores / 8 ranks, capped by the config
    monkeypatch.setenv("RANK_SIZE", "16")  # two servers of 8: still 24 each
    assert _workers(64) == 24
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))  # pinned by the launcher
    assert _workers(64) == 12
