#!/usr/bin/env python3
"""Make a small real ImageFolder dataset from scikit-learn's bundled handwritten digits.

    python tools/prepare_digits.py --output data/digits [--size 64]

scikit-learn ships 1,797 real 8x8 scans of handwritten digits (10 classes) with the package, so no
network is needed. Each scan becomes a size x size RGB PNG (bicubic upscaling, white ink on
black), split 80/20 per class with a fixed seed:

    DIR/train/0/0000.png ... DIR/train/9/...   (1,437 images)
    DIR/val/0/....png    ... DIR/val/9/...     (360 images)

The file name is the sample's index in ``load_digits()``. Re-running on a complete folder of the
same size changes nothing; an incomplete one is completed. The counts are printed.
"""
import argparse
import json
import os
import sys

import numpy as np

SPLIT_SEED = 0
VAL_FRACTION = 0.2
MARKER = "prepare_digits.json"


def split_indices(targets, val_fraction=VAL_FRACTION, seed=SPLIT_SEED):
    """Stratified split: for each class, a fixed random val_fraction of its samples (rounded) goes to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(targets):
        idx = np.flatnonzero(targets == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


def _plan(size):
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, targets = digits.images, digits.target
    train, val = split_indices(targets)
    plan = []
    for split, indices in (("train", train), ("val", val)):
        for i in indices:
            plan.append((split, int(targets[i]), i))
    return images, plan


def _render(image8, size):
    from PIL import Image
    gray = np.clip(image8 / 16.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")


def _counts(plan):
    counts = {"train": {}, "val": {}}
    for split, cls, _ in plan:
        counts[split][cls] = counts[split].get(cls, 0) + 1
    return counts


def prepare_digits(output, size=64, verbose=True):
    """Write (or complete) the digits ImageFolder under ``output``. Returns {'train': {cls: n}, 'val': {...}}."""
    if size < 8:
        raise ValueError(f"--size must be at least 8, got {size}")
    images, plan = _plan(size)
    counts = _counts(plan)
    marker_path = os.path.join(output, MARKER)
    expected = {"size": size, "train": sum(counts["train"].values()), "val": sum(counts["val"].values())}
    paths = [os.path.join(output, split, str(cls), f"{i:04d}.png") for split, cls, i in plan]

    complete = False
    if os.path.isfile(marker_path):
        try:
            with open(marker_path, encoding="utf-8") as fh:
                complete = json.load(fh) == expected
        except (OSError, ValueError):
            complete = False
    if complete and all(os.path.isfile(p) for p in paths):
        written = 0
    else:
        rewrite_all = os.path.isfile(marker_path) and not complete  # e.g. another --size
        written = 0
        for (split, cls, i), path in zip(plan, paths):
            if not rewrite_all and os.path.isfile(path):
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            _render(images[i], size).save(tmp, format="PNG")
            os.replace(tmp, path)
            written += 1
        with open(marker_path, "w", encoding="utf-8") as fh:
            json.dump(expected, fh)

    if verbose:
        state = "already complete, nothing written" if written == 0 else f"wrote {written} files"
        print(f"digits ImageFolder at {output} ({size}x{size} RGB PNG): {state}")
        for split in ("train", "val"):
            per = ", ".join(f"{c}:{counts[split][c]}" for c in sorted(counts[split]))
            print(f"  {split}: {sum(counts[split].values())} images in {len(counts[split])} classes ({per})")
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="dataset root to create (gets train/ and val/)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    args = parser.parse_args(argv)
    try:
        prepare_digits(args.output, args.size)
    except ImportError:
        print("prepare_digits.py needs scikit-learn: python3 -m pip install scikit-learn", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
