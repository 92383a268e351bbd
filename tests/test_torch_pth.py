"""The official weights without PyTorch: .pth / .pth.tar files written by torch itself, read by src/torch_pth.py.

../shared/fixtures/torch_pth/ holds the weights of the SwiftFormer_XS reference fixture saved by torch 2.13 in its
zip format (DeiT style: ``{'model': ..., 'epoch', 'args': Namespace}``) and in its legacy format (timm style:
``{'state_dict': {'module.' + name: ...}, 'state_dict_ema', 'args': Namespace, ...}``). Converted through
tools/convert_torch_checkpoint.py, both give exactly the checkpoint and the logits of the ``.npz`` route. No
torch is imported anywhere here; a crafted file that names ``os.system`` runs nothing.
"""
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from helpers import FIXTURES, fixture_arrays, fixture_weights, rel_err, requires_fixtures, run_cli

pytestmark = pytest.mark.unit

PTH = FIXTURES.parent / "torch_pth"
FILES = ("SwiftFormer_XS_deit.pth", "SwiftFormer_XS_timm_legacy.pth.tar")
requires_pth = pytest.mark.skipif(not all((PTH / f).is_file() for f in FILES),
                                  reason=f"torch-written checkpoints not found in {PTH}")


@requires_fixtures
@requires_pth
@pytest.mark.parity
@pytest.mark.parametrize("name", FILES)
def test_reader_gives_the_arrays_torch_saved(name):
    from src.torch_pth import Skipped, read_pth

    obj, skipped = read_pth(str(PTH / name))
    assert skipped == ["argparse.Namespace"]
    assert isinstance(obj["args"], Skipped) and isinstance(obj["epoch"], int)
    state = obj["model"] if "model" in obj else obj["state_dict"]
    reference = fixture_weights("SwiftFormer_XS")
    assert {k[len("module."):] if k.startswith("module.") else k for k in state} == set(reference)
    for key, value in state.items():
        ours = reference[key[len("module."):] if key.startswith("module.") else key]
        if key.endswith("num_batches_tracked"):
            assert value.dtype == np.int64 and value.shape == ()
        else:
            assert value.dtype == np.float32
            np.testing.assert_array_equal(value, ours, err_msg=key)


@requires_fixtures
@requires_pth
@pytest.mark.parity
@pytest.mark.cli
def test_converted_pth_files_give_the_logits_of_the_npz_route(tmp_path):
    """tools/convert_torch_checkpoint.py on each .pth and on the .npz of the same weights: same logits, bitwise."""
    import mindspore as ms

    from models import create_model

    np.savez(tmp_path / "SwiftFormer_XS.npz", **fixture_weights("SwiftFormer_XS"))
    sources = {"npz": tmp_path / "SwiftFormer_XS.npz", **{name: PTH / name for name in FILES}}
    for label, src in sources.items():
        out = run_cli("tools/convert_torch_checkpoint.py", "--arch", "SwiftFormer_XS", "--src", src,
                      "--dst", tmp_path / f"{label}.ckpt").stdout
        assert "dropped 26 BatchNorm num_batches_tracked counters" in out and "not used" not in out, out
    arrays = fixture_arrays("SwiftFormer_XS")
    net = create_model("SwiftFormer_XS", num_classes=1000)
    net.set_train(False)
    logits = {}
    for label in sources:
        ms.load_param_into_net(net, ms.load_checkpoint(str(tmp_path / f"{label}.ckpt")), strict_load=True)
        logits[label] = net(ms.Tensor(arrays["input"])).asnumpy()
    for name in FILES:
        np.testing.assert_array_equal(logits[name], logits["npz"], err_msg=name)
    assert rel_err(logits["npz"], arrays["logits"]) < 1e-5


def _zip_checkpoint(path, payload):
    """A file in torch's zip layout whose data.pkl is ``payload`` (bytes)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("crafted/data.pkl", payload)
        archive.writestr("crafted/byteorder", "little")
        archive.writestr("crafted/version", "3\n")


class _Evil:
    """Pickles as a call of os.system (what a malicious checkpoint does)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_crafted_checkpoint_runs_nothing(tmp_path, layout):
    marker = tmp_path / "pwned"
    evil = {"model": {"head.weight": _Evil(f"touch {marker}")}, "hook": _Evil(f"touch {marker}")}
    payload = pickle.dumps(evil, protocol=2)
    assert b"system" in payload  # the file really names os.system (posix.system)
    src = tmp_path / "crafted.pth"
    if layout == "zip":
        _zip_checkpoint(src, payload)
    else:
        stream = io.BytesIO()
        for head in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(head, stream, protocol=2)
        stream.write(payload)
        pickle.dump([], stream, protocol=2)
        src.write_bytes(stream.getvalue())

    from src.torch_pth import Skipped, read_pth

    obj, skipped = read_pth(str(src))
    assert not marker.exists()
    assert isinstance(obj["hook"], Skipped) and any(name.endswith(".system") for name in skipped)
    proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "SwiftFormer_XS", "--src", src,
                   "--dst", tmp_path / "x.ckpt", check=False)
    assert not marker.exists()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr
    assert not (tmp_path / "x.ckpt").exists()


def test_files_that_are_not_torch_checkpoints_are_one_sentence(tmp_path):
    from src.torch_pth import PthFormatError, read_pth

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(PthFormatError, match="is not a PyTorch checkpoint"):
        read_pth(str(junk))
    truncated = tmp_path / "truncated.pth.tar"
    stream = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(head, stream, protocol=2)
    stream.write(struct.pack("<q", 5))
    truncated.write_bytes(stream.getvalue())
    with pytest.raises(PthFormatError, match="cannot read"):
        read_pth(str(truncated))
    proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "soft_tiny", "--src", junk,
                   "--dst", tmp_path / "x.ckpt", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "is not a PyTorch checkpoint" in proc.stderr
