"""Shared test helpers: where the PyTorch reference fixtures live and how to compare with them."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: the PyTorch reference fixtures (../shared/fixtures/torch_reference beside the clone; SOFT_FIXTURES overrides)
FIXTURES = Path(os.environ.get("SOFT_FIXTURES", REPO.parent / "shared" / "fixtures" / "torch_reference"))
#: one block per stage: the depths of test models where the depth changes nothing tested (same code, less compiling)
SHALLOW = (1, 1, 1, 1)
#: the one skip rule of every fixture-based test: same condition, same reason
requires_fixtures = pytest.mark.skipif(
    not (FIXTURES / "soft_tiny.npz").is_file(),
    reason=f"PyTorch reference fixtures not found at {FIXTURES} (put shared/ beside the clone or set SOFT_FIXTURES)")


def rel_err(ours, ref):
    """max|ours - ref| / max|ref|, the fixtures' tolerance measure."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def fixture_weights(name):
    """The state-dict arrays of fixture ``name`` (inputs and logits left out)."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files if not k.startswith(("input", "logits"))}


def fixture_arrays(name):
    """Inputs and reference logits of fixture ``name``."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files if k.startswith(("input", "logits"))}


def run_cli(*args, timeout=600, check=True):
    """Run ``python ARGS`` from the repository root; returns the CompletedProcess (text output)."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def convert_fixture(tmp_path, arch, weights="soft_tiny"):
    """Convert the fixture weights for ``arch`` with the converter's ``convert_file`` (what
    tools/convert_torch_checkpoint.py runs; the CLI itself is tested in test_converter.py); returns the .ckpt path."""
    from src.torch_checkpoint import convert_file

    src = tmp_path / f"{weights}_weights.npz"
    if not src.exists():
        np.savez(src, **fixture_weights(weights))
    dst = tmp_path / f"{arch}.ckpt"
    convert_file(arch, str(src), str(dst))
    return dst


def tree_state(root, skip=()):
    """{relative path: (kind, size, mtime_ns, content hash or link target)} of everything under ``root``, for
    checking that a command changed nothing there; names in ``skip`` (e.g. an image cache) are left out."""
    import hashlib

    root = Path(root)
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in skip for part in rel.parts):
            continue
        if path.is_symlink():
            state[str(rel)] = ("link", os.readlink(path))
        elif path.is_dir():
            state[str(rel)] = ("dir",)
        else:
            info = path.stat()
            state[str(rel)] = ("file", info.st_size, info.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return state
