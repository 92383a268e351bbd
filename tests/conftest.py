"""Shared pytest fixtures: the digits ImageFolder and small generated ImageFolder trees.

* ``digits_root`` (session): ``tools/prepare_digits.py`` run into a temporary folder, 64x64 PNGs,
  ``train/0..9`` (1,438 images) and ``val/0..9`` (359 images).
* ``image_folder_factory``: ``make(...)`` builds a small ImageFolder tree and returns its root.
"""
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_report_header(config):
    """Which path this run tests: with the CPU speed layer (the default on CPU) or the portable one."""
    value = os.environ.get("SOFT_CPU_KERNELS", "auto")
    if value.strip().lower() in ("0", "off", "false", "no"):
        return f"models: the portable path (SOFT_CPU_KERNELS={value}: what GPU and Ascend run)"
    return f"models: with the CPU speed layer (SOFT_CPU_KERNELS={value})"


def load_tool(name):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """Root of the digits ImageFolder (train/ and val/, classes '0'..'9', 64x64 RGB PNG)."""
    root = tmp_path_factory.mktemp("digits")
    load_tool("prepare_digits").prepare_digits(str(root), size=64, verbose=False)
    return root


def _image(rng, size, mode, content, index):
    from PIL import Image
    width, height = size
    if content == "index":  # a solid colour that encodes the image's global index
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[...] = (index % 256, (index // 256) % 256, 128)
    else:
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(rgb, "RGB")
    return img if mode == "RGB" else img.convert(mode)


@pytest.fixture
def image_folder_factory(tmp_path_factory):
    """``make(per_class=4, classes=2, splits=("train", "val"), size=(48, 40), fmt="PNG", ext=None,
    mode="RGB", content="noise", root=None, seed=0) -> Path``.

    Writes ``root/<split>/<class>/img_<k>.<ext>`` (or ``root/<class>/...`` when ``splits`` is empty).
    ``per_class``: an int, or one count per class (0 makes an empty class folder). ``classes``: a count
    (names ``class_0``...) or a list of names. ``size`` is (width, height). ``fmt``: a PIL format name
    (PNG, JPEG, BMP, ...); ``ext`` defaults to its usual extension. ``mode``: the PIL mode of the saved
    images (RGB, L, CMYK, RGBA, ...). ``content``: "noise" (random pixels) or "index" (a solid colour
    whose red + 256 * green is the image's running index over the split, for checking which images came
    out of a pipeline).
    """
    def make(per_class=4, classes=2, splits=("train", "val"), size=(48, 40), fmt="PNG", ext=None,
             mode="RGB", content="noise", root=None, seed=0):
        root = Path(root) if root is not None else tmp_path_factory.mktemp("imagefolder")
        names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
        counts = [per_class] * len(names) if isinstance(per_class, int) else list(per_class)
        if len(counts) != len(names):
            raise ValueError("per_class needs one count per class")
        extension = ext or {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif",
                            "WEBP": ".webp"}.get(fmt.upper(), "." + fmt.lower())
        rng = np.random.default_rng(seed)
        for split in (list(splits) if splits else [None]):
            base = root / split if split else root
            index = 0
            for name, count in zip(names, counts):
                folder = base / name
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(count):
                    img = _image(rng, size, mode, content, index)
                    img.save(folder / f"img_{k:03d}{extension}", format=fmt)
                    index += 1
        return root

    return make
