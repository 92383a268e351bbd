"""The PyTorch checkpoint converter and strict checkpoint loading: every entry used or reported."""
import re

import numpy as np
import pytest

import mindspore as ms

from helpers import fixture_weights, requires_fixtures, run_cli
from models import CheckpointMismatchError, create_model, load_checkpoint_strict
from models.softmax_free_vision_transformer import torch_param_names
from src.torch_checkpoint import convert_state_dict, load_torch_state_dict

pytestmark = pytest.mark.unit


@requires_fixtures
@pytest.mark.parity
def test_every_soft_parameter_maps_onto_a_distinct_reference_entry():
    net = create_model("soft_tiny")
    names = torch_param_names(net)
    weights = fixture_weights("soft_tiny")
    assert len(set(names.values())) == len(names)
    assert set(names.values()) == {k for k in weights if not k.endswith("num_batches_tracked")}


@pytest.mark.cli
@pytest.mark.slow  # the converter CLI on a 24M-parameter model
def test_published_soft_small_with_20_stage3_blocks_converts(tmp_path):
    """The public code builds soft_small with 20 stage-3 blocks; the depths are inferred from the keys."""
    source = create_model("soft_small", num_classes=10, depths=(1, 3, 20, 4))
    state = {theirs: p.asnumpy() for (ours, theirs), p in
             zip(torch_param_names(source).items(), source.get_parameters())}
    src = tmp_path / "soft_small_published.npz"
    np.savez(src, **state)
    dst = tmp_path / "soft_small.ckpt"
    out = run_cli("tools/convert_torch_checkpoint.py", "--arch", "soft_small", "--src", src, "--dst", dst).stdout
    assert "depths" in out and "(1, 3, 20, 4)" in out
    net = create_model("soft_small", num_classes=10, depths=(1, 3, 20, 4), pretrained=str(dst))
    for p, q in zip(net.get_parameters(), source.get_parameters()):
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy())


@requires_fixtures
@pytest.mark.parity
def test_norm_variant_takes_the_plain_weights():
    net, report = convert_state_dict("soft_norm_tiny", fixture_weights("soft_tiny"))
    assert report.complete and report.dropped_counters == 6 and not report.overrides.get("depths")


@requires_fixtures
@pytest.mark.parity
def test_nested_and_prefixed_state_dicts_are_unwrapped(tmp_path):
    weights = {f"module.{k}": v for k, v in list(fixture_weights("soft_tiny").items())[:5]}
    np.savez(tmp_path / "prefixed.npz", **weights)
    loaded = load_torch_state_dict(str(tmp_path / "prefixed.npz"))
    assert set(loaded) == {k[len("module."):] for k in weights}


@requires_fixtures
@pytest.mark.parity
def test_converter_names_a_mis_shaped_entry(tmp_path):
    weights = fixture_weights("soft_tiny")
    weights["block2.1.att.ff1.weight"] = weights["block2.1.att.ff1.weight"][:100]
    src = tmp_path / "bad.npz"
    np.savez(src, **weights)
    proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "soft_tiny", "--src", src,
                   "--dst", tmp_path / "bad.ckpt", check=False)
    assert proc.returncode == 2
    assert "block2.1.fc1.weight" in proc.stderr and "block2.1.att.ff1.weight" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad.ckpt").exists()


@requires_fixtures
@pytest.mark.parity
def test_converter_reports_unused_and_unfilled_entries(tmp_path):
    weights = fixture_weights("soft_tiny")
    del weights["block1.0.att.mha.attn.conv.weight"]
    weights["extra.layer.weight"] = np.zeros(3, np.float32)
    src = tmp_path / "partial.npz"
    np.savez(src, **weights)
    proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "soft_tiny", "--src", src,
                   "--dst", tmp_path / "partial.ckpt", check=False)
    assert proc.returncode == 2
    assert "extra.layer.weight" in proc.stderr and "block1.0.attn.local_conv.weight" in proc.stderr
    proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "soft_tiny", "--src", src,
                   "--dst", tmp_path / "partial.ckpt", "--allow-partial")
    assert "not filled" in proc.stdout and (tmp_path / "partial.ckpt").exists()


def test_unknown_arch_and_missing_file_are_one_line_errors(tmp_path):
    proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "soft_tinny", "--src", tmp_path / "x.npz",
                   "--dst", tmp_path / "x.ckpt", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not found" in proc.stderr or "Unknown model" in proc.stderr


def test_wrong_checkpoint_names_missing_unexpected_and_mis_shaped_parameters(tmp_path):
    net = create_model("soft_tiny", num_classes=10)
    params = {p.name: p for p in net.get_parameters()}
    params.pop("block1.0.attn.q.bias")
    params["not_a_layer.weight"] = ms.Parameter(ms.Tensor(np.zeros(2, np.float32)), name="not_a_layer.weight")
    params["head.weight"] = ms.Parameter(ms.Tensor(np.zeros((7, 512), np.float32)), name="head.weight")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint_strict(create_model("soft_tiny", num_classes=10), params)
    message = str(err.value)
    assert re.search(r"missing: .*block1\.0\.attn\.q\.bias", message)
    assert re.search(r"unexpected: .*not_a_layer\.weight", message)
    assert re.search(r"mis-shaped: .*head\.weight \(checkpoint \(7, 512\), model \(10, 512\)\)", message)


def test_pretrained_round_trip_through_a_saved_checkpoint(tmp_path):
    ms.set_seed(1)
    net = create_model("soft_tiny", num_classes=10)
    path = str(tmp_path / "net.ckpt")
    ms.save_checkpoint(net, path, crc_check=True)
    again = create_model("soft_tiny", num_classes=10, pretrained=path)
    for p, q in zip(net.get_parameters(), again.get_parameters()):
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy())
    with pytest.raises(CheckpointMismatchError):  # another backbone (another head size: tests/test_finetune.py)
        create_model("soft_tiny", num_classes=10, depths=(1, 2, 3, 3), pretrained=path)
