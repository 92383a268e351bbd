"""Input pipelines (src/dataset.py), RandAugment parsing (src/autoaugment.py), digits preparation."""
import importlib.util
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.autoaugment import _magnitude_table, build_auto_augment, parse_rand_augment
from src.dataset import (IMAGENET_MEAN, IMAGENET_STD, _workers, create_dataset, eval_resize_size,
                         scan_image_folder)
from src.model_utils.config import make_config

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
    with pytest.raises(ValueError, match="differ from those of"):
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
