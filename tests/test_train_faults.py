"""train.py as a user runs it, on small generated folders: BatchNorm statistics of every model family, and
the faults a user meets.

Every model family, lr 0 on images of one uniform colour: the BatchNorm statistics after train.py (with
evaluation after every epoch) are exactly what the batch statistics of the fixed input dictate: every step
in training mode, none in evaluation.

Faults: an output folder that is a file, a read-only or full disk found at start-up, a save failing on a
full disk later, stale temporary files removed, ``--resume auto`` past an unreadable newest checkpoint,
SIGINT / SIGTERM; and user callbacks called as ``Model.train`` calls them.
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from test_train_cli import CONFIG, REPO, _env, _epochs, _error_lines, _run

pytestmark = [pytest.mark.cli, pytest.mark.slow]

#: a small, quick-to-compile soft_tiny for the fault scenarios
TINY = ["--train_image_size", "32", "--eval_image_size", "32", "--batch_size", "4", "--eval_batch_size", "8",
        "--class_num", "2", "--model_args", "depths=[1,1,1,1]", "--train_num_workers", "1",
        "--eval_num_workers", "1", "--log_interval", "1", "--warmup_epochs", "0", "--lr_init", "1e-4",
        "--lr_max", "1e-4", "--lr_min", "1e-5"]


FAMILIES = {"soft_tiny": ("patch_embed1.proj.0", "patch_embed1.proj.1", 2),
            "soft_norm_tiny": ("patch_embed1.proj.0", "patch_embed1.proj.1", 2),
            "SwiftFormer_XS": ("patch_embed.0", "patch_embed.1", 2)}
UNIFORM_RGB = (200, 60, 120)


@pytest.fixture(scope="module")
def uniform_folder(tmp_path_factory):
    """Two classes of identical uniform-colour images: every crop / flip / resize gives the same input."""
    root = tmp_path_factory.mktemp("uniform")
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 36), UNIFORM_RGB).save(folder / f"{i}.png")
    return root


def _conv_stats(x, weight, bias, stride, pad):
    """Per-channel mean and unbiased variance of conv2d(x, weight) + bias over (batch, H, W), float64."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = weight.shape[-1]
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = np.stack([xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                     for i in range(k) for j in range(k)], axis=2)  # [n, c, k*k, oh, ow]
    out = np.einsum("nckhw,ock->nohw", cols, weight.reshape(weight.shape[0], c, k * k)) + bias[None, :, None, None]
    return out.mean(axis=(0, 2, 3)), out.var(axis=(0, 2, 3), ddof=1)


@pytest.mark.both_paths
@pytest.mark.parametrize("backbone", sorted(FAMILIES))
def test_batchnorm_statistics_follow_the_batch_statistics(backbone, uniform_folder, tmp_path):
    import mindspore as ms
    from src.dataset import IMAGENET_MEAN, IMAGENET_STD

    conv, bn, stride = FAMILIES[backbone]
    epochs, batch = 2, 4
    proc = _run(["train.py", "--config_path", CONFIG, "--dataset_path", str(uniform_folder), "--output_path",
                 str(tmp_path), "--backbone", backbone, "--class_num", "2", "--train_image_size", "32",
                 "--eval_image_size", "32", "--batch_size", str(batch), "--eval_batch_size", "4",
                 "--max_epoch", str(epochs), "--warmup_epochs", "0", "--lr_init", "0", "--lr_max", "0",
                 "--lr_min", "0", "--lr_decay_mode", "constant", "--eval_interval", "1", "--crop_min", "0.5",
                 "--hflip", "0.5", "--train_num_workers", "1", "--eval_num_workers", "1", "--log_interval", "0",
                 "--model_args", "depths=[1,1,1,1]"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = _epochs(proc.stdout)
    assert [int(m.group(1)) for m in found] == [0, 1] and all(m.group(7) for m in found)  # eval every epoch
    steps = 12 // batch
    entries = ms.load_checkpoint(str(tmp_path / f"{backbone}-{epochs}_{steps}.ckpt"))
    pixel = (np.array(UNIFORM_RGB, np.float64) - IMAGENET_MEAN) / IMAGENET_STD
    x = np.broadcast_to(pixel[None, :, None, None], (batch, 3, 32, 32))
    mean, var = _conv_stats(x, entries[f"{conv}.weight"].asnumpy().astype(np.float64),
                            entries[f"{conv}.bias"].asnumpy().astype(np.float64), stride, 1)
    updates = epochs * steps  # momentum 0.9 (PyTorch's 0.1), from mean 0 / variance 1
    keep = 0.9 ** updates
    np.testing.assert_allclose(entries[f"{bn}.moving_mean"].asnumpy(), (1 - keep) * mean, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(entries[f"{bn}.moving_variance"].asnumpy(), keep + (1 - keep) * var,
                               rtol=2e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ faults
@pytest.fixture
def tiny_folder(image_folder_factory):
    return image_folder_factory(per_class=8, classes=2, size=(36, 36))


def _tmpfs(path, size_bytes, read_only=False):
    """Mount a tmpfs of ``size_bytes`` at ``path`` (skip the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={int(size_bytes)}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:100]}): needs root with mount rights")


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_an_output_folder_that_cannot_be_written_is_found_at_start_up(tiny_folder, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    proc = _run(["train.py", "--config_path", CONFIG, "--dataset_path", str(tiny_folder),
                 "--output_path", str(blocker)] + TINY)
    assert proc.returncode == 1
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and str(blocker) in errors[0] and "is a file" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr

    for name, size, read_only, words in (("readonly", 1 << 20, True, "Read-only file system"),
                                         ("full", 256 << 10, False, "No space left on device")):
        mount = tmp_path / name
        _tmpfs(mount, size, read_only)
        try:
            proc = _run(["train.py", "--config_path", CONFIG, "--dataset_path", str(tiny_folder),
                         "--output_path", str(tmp_path / f"out_{name}"), "--save_checkpoint_path", str(mount)]
                        + TINY)
        finally:
            _umount(mount)
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        errors = _error_lines(proc.stderr)
        assert len(errors) == 1 and "cannot be written" in errors[0] and words in errors[0], proc.stderr[-2000:]
        assert not _epochs(proc.stdout)  # found before the first step


def test_a_save_that_fails_on_a_full_disk_stops_and_keeps_the_previous_checkpoint(tiny_folder, tmp_path):
    from models import create_model
    from src.trainer import _state_bytes  # what one training checkpoint needs
    from src.model_utils.config import make_config
    from src.train_step import build_train_step

    config = make_config({"backbone": "soft_tiny", "class_num": 2, "model_args": {"depths": [1, 1, 1, 1]},
                          "dataset_path": str(tiny_folder)})
    needed = _state_bytes(build_train_step(config, create_model("soft_tiny", num_classes=2,
                                                                 depths=(1, 1, 1, 1))))
    mount = tmp_path / "disk"
    _tmpfs(mount, int(needed * 1.5))  # room for one checkpoint, not two
    try:
        proc = _run(["train.py", "--config_path", CONFIG, "--dataset_path", str(tiny_folder), "--output_path",
                     str(tmp_path / "out"), "--save_checkpoint_path", str(mount), "--max_epoch", "3",
                     "--eval_interval", "0", "--keep_checkpoint_max", "3"] + TINY)
        files = sorted(p.name for p in mount.iterdir())
        first = mount / "soft_tiny-1_4.ckpt"
        import mindspore as ms
        first_ok = first.is_file() and int(ms.load_checkpoint(str(first))["epoch_num"].asnumpy()) == 1
    finally:
        _umount(mount)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "could not save the checkpoint" in errors[0] and "No space left" in errors[0]
    assert f"The previous checkpoint {first} is intact" in errors[0]
    assert first_ok and files == ["best.ckpt", "soft_tiny-1_4.ckpt"], files  # no partial file left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_stops_at_once_and_resume_auto_skips_an_unreadable_checkpoint(sig, tiny_folder,
                                                                                         tmp_path):
    """Either signal: one line, exit 130/143, the newest checkpoint intact. SIGTERM: then a torn newer
    checkpoint and stale temporary files, and ``--resume auto`` goes on from the newest readable one."""
    out = tmp_path / "out"
    args = [sys.executable, "train.py", "--config_path", CONFIG, "--dataset_path", str(tiny_folder),
            "--output_path", str(out), "--max_epoch", "50", "--eval_interval", "0"] + TINY
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not (out / "soft_tiny-2_4.ckpt").is_file():
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        sent = time.time()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # MindSpore's runtime turns a Ctrl-C during Model.train into a SIGTERM of the process: 130 or 143
    assert proc.returncode in ((128 + signal.SIGINT, 128 + signal.SIGTERM) if sig == signal.SIGINT else
                               (128 + signal.SIGTERM,)), stderr[-2000:]
    assert took < 20
    errors = _error_lines(stderr)
    assert len(errors) == 1 and re.fullmatch(r"ERROR: interrupted at epoch \d+ step \d+; resume with --resume auto",
                                             errors[0]), stderr[-2000:]
    assert "Traceback" not in stderr
    saved = sorted(out.glob("soft_tiny-*_4.ckpt"), key=lambda p: int(p.name.split("-")[1].split("_")[0]))
    newest_epoch = int(saved[-1].name.split("-")[1].split("_")[0])
    if sig == signal.SIGINT:  # the resume below is the same for either signal: run it once
        from src.callback import checkpoint_is_readable
        assert checkpoint_is_readable(str(saved[-1]))
        return

    # a torn newer checkpoint and the temporary files of an interrupted save
    torn = out / f"soft_tiny-{newest_epoch + 1}_4.ckpt"
    torn.write_bytes(saved[-1].read_bytes()[:1000])
    stale = [out / f".soft_tiny-9_4.ckpt.partial-{os.getpid()}.tmp", out / f".best.ckpt.partial-{os.getpid()}.ckpt"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    again = _run(["train.py", "--config_path", CONFIG, "--dataset_path", str(tiny_folder), "--output_path",
                  str(out), "--resume", "auto", "--max_epoch", str(newest_epoch + 1), "--eval_interval", "0"] + TINY)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"the newest checkpoint {torn} cannot be read; resuming from {saved[-1]}" in again.stdout
    assert f"resumed from {saved[-1]}: {newest_epoch} epochs done" in again.stdout
    assert [int(m.group(1)) for m in _epochs(again.stdout)] == [newest_epoch]
    assert not any(path.exists() for path in stale)


def test_user_callbacks_are_called_as_model_train_calls_them(tiny_folder, tmp_path):
    from mindspore.train import Callback

    from src.model_utils.config import make_config
    from src.trainer import run_training

    class Recorder(Callback):
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_train_begin(self, run_context):
            self.calls.append(("begin",))

        def on_train_step_end(self, run_context):
            args = run_context.original_args()
            self.calls.append(("step", args.cur_epoch_num, args.cur_step_num, float(args.net_outputs[0].asnumpy())))

        def on_train_epoch_end(self, run_context):
            args = run_context.original_args()
            self.calls.append(("epoch", args.cur_epoch_num, args.cur_step_num, args.eval_result is not None,
                               args.epoch_loss))

        def on_train_end(self, run_context):
            self.calls.append(("end",))

    overrides = {"backbone": "soft_tiny", "class_num": 2, "model_args": {"depths": [1, 1, 1, 1]},
                 "dataset_path": str(tiny_folder), "output_path": str(tmp_path), "train_image_size": 32,
                 "eval_image_size": 32, "batch_size": 4, "eval_batch_size": 8, "max_epoch": 2, "warmup_epochs": 0,
                 "lr_max": 1e-4, "eval_interval": 2, "train_num_workers": 1, "eval_num_workers": 1,
                 "log_interval": 0, "device_target": "CPU", "save_checkpoint": False}
    with pytest.raises(ValueError, match="Callback"):
        run_training(make_config(overrides), callbacks=[object()])
    recorder = Recorder()
    summary = run_training(make_config(overrides), callbacks=[recorder])
    calls = recorder.calls
    assert calls[0] == ("begin",) and calls[-1] == ("end",)
    steps = [c for c in calls if c[0] == "step"]
    assert [(c[1], c[2]) for c in steps] == [(e, s) for e in (1, 2) for s in range(4 * (e - 1) + 1, 4 * e + 1)]
    assert all(np.isfinite(c[3]) for c in steps)
    epochs = [c for c in calls if c[0] == "epoch"]
    assert [(c[1], c[2], c[3]) for c in epochs] == [(1, 4, False), (2, 8, True)]  # eval_interval 2
    assert epochs[1][4] == pytest.approx(np.mean([c[3] for c in steps[4:]]), rel=1e-5)
    assert summary["epochs_run"] == 2 and len(summary["history"]) == 2
