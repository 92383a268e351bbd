"""Checkpoints of the original MindSpore port (fudan-zvg/SOFT_MindSpore_Ascend) convert to this project's models.

The port's own model code (../shared/bench/ref_ms_port, run in its own process by tests/port_checkpoint.py) makes a
checkpoint as its training saved them (network, AdamWeightDecay state); tools/convert_torch_checkpoint.py converts
it (optimizer state and the cells the port builds but never runs dropped, its missing patch-embedding biases
zero) and the logits are compared: with the port patched to compute the paper's functions they agree to float32
rounding; unpatched they differ by the port's deviations from the paper's code (README, "The original MindSpore
port"). A file that does not map is refused, naming what is left over.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, rel_err, run_cli

PORT_CODE = REPO.parent / "shared" / "bench" / "ref_ms_port"
requires_port_code = pytest.mark.skipif(
    not (PORT_CODE / "port.py").is_file() or importlib.util.find_spec("easydict") is None,
    reason=f"the original port's model code ({PORT_CODE}) or easydict (pip install easydict) not available")


def _run(args, cwd, timeout=600):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=dict(os.environ, GLOG_v="3"), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _port_checkpoint(tmp_path, name, variant="soft_tiny", classes=10, paper=False):
    proc = _run([sys.executable, REPO / "tests" / "port_checkpoint.py", PORT_CODE, tmp_path / name, variant, classes]
                + (["--paper"] if paper else []), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / f"{name}.ckpt", np.load(tmp_path / f"{name}.npz")


def _logits(ckpt, images, classes=10):
    import mindspore as ms

    from models import create_model

    net = create_model("soft_tiny", num_classes=classes, pretrained=str(ckpt))
    net.set_train(False)
    return net(ms.Tensor(images)).asnumpy()


@requires_port_code
@pytest.mark.parity
@pytest.mark.cli
@pytest.mark.slow
def test_port_checkpoint_converts_and_computes_what_the_port_computed(tmp_path):
    results = {}
    for label, paper in (("paper", True), ("port", False)):
        src, reference = _port_checkpoint(tmp_path, label, paper=paper)
        dst = tmp_path / f"{label}_converted.ckpt"
        out = run_cli("tools/convert_torch_checkpoint.py", "--arch", "soft_tiny", "--src", src, "--dst", dst).stdout
        assert "arch: soft_tiny (from the original MindSpore port)" in out
        assert "dropped 388 entries of training state" in out  # AdamWeightDecay moments, step, learning rate
        assert "dropped 50 parameters of cells the port builds but never runs (patch_embed1.conv, " in out
        assert "filled 6 convolution biases the port does not have with zeros" in out and "not used" not in out
        results[label] = rel_err(_logits(dst, reference["input"]), reference["logits"])
    print(f"max|ours - port| / max|port|: port patched to the paper's functions {results['paper']:.1e}, "
          f"the port as published {results['port']:.1e}")
    assert results["paper"] < 2e-6  # the mapping is exact: float32 rounding only
    assert 1e-6 < results["port"] < 1e-3  # the port's tanh GELUs and LayerNorm epsilon 1e-7 (README)


@pytest.mark.cli
def test_port_checkpoint_that_does_not_map_is_refused(tmp_path):
    import mindspore as ms

    from models import create_model
    from models.softmax_free_vision_transformer import port_param_names

    net = create_model("soft_tiny", num_classes=10, depths=(1, 2, 3, 3))  # one stage-4 block more than the port
    entries = [{"name": names[0], "data": param.value()} for (ours, names), param in
               zip(port_param_names(net).items(), net.get_parameters()) if names]
    entries.append({"name": "extra.weight", "data": ms.Tensor(np.zeros(3, np.float32))})
    src = tmp_path / "odd_port.ckpt"
    ms.save_checkpoint(entries, str(src))
    proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "soft_tiny", "--src", src,
                   "--dst", tmp_path / "x.ckpt", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "1 source entries not used: extra.weight" in proc.stderr and not (tmp_path / "x.ckpt").exists()
    proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "SwiftFormer_XS", "--src", src,
                   "--dst", tmp_path / "x.ckpt", check=False)
    assert proc.returncode == 2
    assert "error: the original MindSpore port has SOFT models only; SwiftFormer_XS cannot come from a port " \
           "checkpoint (.ckpt): convert a PyTorch .pth or .npz instead." in proc.stderr
