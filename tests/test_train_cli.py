"""train.py / eval.py as a user runs them, on real digits (soft_tiny, 32x32; module fixtures run in order).

train.py is SIGKILLed right after its first checkpoint; ``--resume`` finishes the run (epochs 1 and 2 only,
optimizer step and lr position restored, accuracy clearly better than chance); eval.py reproduces the best
accuracy; a checkpoint of another backbone is one sentence naming both; an absurd learning rate stops the
run with exit code 3 naming the last good checkpoint, which still loads. The resumed train.py and eval.py run
under ``python -X importtime``: on the portable path (``SOFT_CPU_KERNELS=0``, what GPU and Ascend run) neither
imports any module of the CPU speed layer (``models.cpu``); with the layer, both do.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.cli, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CONFIG = "config/SOFT_tiny_demo_cpu.yml"
MAX_EPOCH = 3
COMMON = ["--train_image_size", "32", "--eval_image_size", "32", "--dataset_fraction", "0.25",
          "--batch_size", "16", "--eval_batch_size", "32", "--lr_max", "3e-4", "--lr_init", "1e-5",
          "--warmup_epochs", "1", "--max_epoch", str(MAX_EPOCH), "--keep_checkpoint_max", "2",
          "--train_num_workers", "1", "--eval_num_workers", "1", "--log_interval", "0",
          "--model_args", "depths=[1,1,1,1]"]  # one block per stage: the same code, half the compile time
EPOCH_RE = re.compile(r"epoch\[(\d+)\], epoch time: ([\d.]+)s, per step time: ([\d.]+)s, loss=([\d.]+), "
                      r"lr=([\d.]+), fps=([\d.]+)(?:, accuracy=([\d.]+), eval_cost=([\d.]+))?$")
DIVERGED_RE = re.compile(r"(loss became (?:NaN|Inf)|gradients became NaN/Inf \(loss=[^)]*\)) at epoch (\d+) "
                         r"step (\d+); stopping\. Last good checkpoint: (\S+\.ckpt)")


def _env():
    return dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1")


def _run(args, timeout=400, **kwargs):
    return subprocess.run([sys.executable] + args, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def _run_noting_imports(args):
    """``_run`` under ``python -X importtime``: the process (its stderr without the import lines, so that
    failure messages show the run's own output) and the names of the modules it imported, in order."""
    proc = _run(["-X", "importtime"] + args)
    lines = proc.stderr.splitlines()
    imported = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
    proc.stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    return proc, imported


def _assert_cpu_layer_imported_only_with_the_layer(imported):
    from models import cpu_layer_enabled
    assert imported, "no -X importtime output"
    layer = sorted({name for name in imported if name == "models.cpu" or name.startswith("models.cpu.")})
    if cpu_layer_enabled():
        assert "models.cpu" in layer
    else:
        assert not layer, f"the portable path imported {layer}"


def _epochs(text):
    return [m for m in (EPOCH_RE.search(line.strip()) for line in text.splitlines()) if m]


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("ERROR:")]


@pytest.fixture(scope="module")
def run_dir(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_cli")
    return {"data": str(digits_root), "out": str(out)}


@pytest.fixture(scope="module")
def killed_run(run_dir):
    """train.py SIGKILLed as soon as its first epoch checkpoint exists."""
    out = Path(run_dir["out"])
    log = out / "killed_stdout.txt"
    args = [sys.executable, "train.py", "--config_path", CONFIG, "--dataset_path", run_dir["data"],
            "--output_path", str(out)] + COMMON
    with open(log, "w") as handle:
        proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.time() + 400
        try:
            while time.time() < deadline and proc.poll() is None:
                if list(out.glob("soft_tiny-1_*.ckpt")):
                    break
                time.sleep(0.2)
            assert proc.poll() is None, "train.py ended before it could be killed:\n" + log.read_text()[-3000:]
            assert list(out.glob("soft_tiny-1_*.ckpt")), "no checkpoint within the time limit"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    return {"log": log.read_text(), "returncode": proc.returncode}


@pytest.fixture(scope="module")
def resumed_run(run_dir, killed_run):
    out = run_dir["out"]
    ckpt = sorted(Path(out).glob("soft_tiny-1_*.ckpt"))[0]
    proc, imported = _run_noting_imports(["train.py", "--config_path", CONFIG, "--dataset_path", run_dir["data"],
                                          "--output_path", out, "--resume", str(ckpt)] + COMMON)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best = re.search(r"last_metric\[([\d.]+)\]", proc.stdout)
    return {"stdout": proc.stdout, "imported": imported, "resumed_from": str(ckpt),
            "best_acc": float(best.group(1)) if best else None}


def test_killed_run_left_a_complete_checkpoint(killed_run, run_dir):
    assert killed_run["returncode"] == -signal.SIGKILL
    epochs = _epochs(killed_run["log"])
    assert [int(m.group(1)) for m in epochs] == [0]
    assert epochs[0].group(7) is not None  # evaluated
    assert "dataset sink mode is not available on CPU" in killed_run["log"]  # said once, then unsunk
    assert killed_run["log"].count("dataset sink mode is not available on CPU") == 1
    import mindspore as ms
    path = sorted(Path(run_dir["out"]).glob("soft_tiny-1_*.ckpt"))[0]
    entries = ms.load_checkpoint(str(path))  # crc-checked, complete
    assert int(entries["epoch_num"].asnumpy()) == 1
    assert entries["backbone"] == "soft_tiny"
    assert "loss_scale" in entries and any(k.startswith("adam_m.") for k in entries)


@pytest.mark.both_paths
def test_resume_finishes_at_the_right_epoch(resumed_run, run_dir):
    import mindspore as ms
    from src.lr_generator import get_lr

    text = resumed_run["stdout"]
    _assert_cpu_layer_imported_only_with_the_layer(resumed_run["imported"])
    assert f"resumed from {resumed_run['resumed_from']}: 1 epochs done" in text
    epochs = _epochs(text)
    assert [int(m.group(1)) for m in epochs] == [1, 2], text[-3000:]
    steps = int(re.search(r"soft_tiny-1_(\d+)\.ckpt", resumed_run["resumed_from"]).group(1))
    lrs = get_lr(1e-5, 3e-4, 1e-5, 1, MAX_EPOCH, steps, "cosine")
    for match in epochs:  # the logged lr is the schedule's value at the epoch's last step
        epoch = int(match.group(1))
        assert float(match.group(5)) == pytest.approx(float(lrs[(epoch + 1) * steps - 1]), abs=2e-6)
    final = Path(run_dir["out"]) / f"soft_tiny-{MAX_EPOCH}_{steps}.ckpt"
    entries = ms.load_checkpoint(str(final))
    assert int(entries["epoch_num"].asnumpy()) == MAX_EPOCH
    assert int(entries["global_step"].asnumpy().reshape(-1)[0]) == MAX_EPOCH * steps  # optimizer step restored
    # keep_checkpoint_max 2: epoch 1 was pruned
    assert sorted(p.name for p in Path(run_dir["out"]).glob("soft_tiny-*.ckpt")) == \
        [f"soft_tiny-2_{steps}.ckpt", f"soft_tiny-3_{steps}.ckpt"]
    accuracy = float(epochs[-1].group(7))
    assert accuracy > 0.3, f"accuracy {accuracy} is not clearly better than chance (0.1)"
    assert "training time used=" in text and "mean_fps[" in text
    best = resumed_run["best_acc"]
    assert best >= accuracy - 1e-6 and (Path(run_dir["out"]) / "best.ckpt").is_file()
    # the BatchNorm statistics were tracked in training mode (the eval after every epoch did not freeze them)
    mean = entries["patch_embed1.proj.1.moving_mean"].asnumpy()
    assert np.abs(mean).max() > 1e-3


@pytest.mark.both_paths
def test_eval_reproduces_best_accuracy(resumed_run, run_dir):
    best_ckpt = str(Path(run_dir["out"]) / "best.ckpt")
    proc, imported = _run_noting_imports(["eval.py", "--config_path", CONFIG, "--dataset_path", run_dir["data"],
                                          "--checkpoint_file_path", best_ckpt] + COMMON)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_cpu_layer_imported_only_with_the_layer(imported)
    match = re.search(r"^accuracy=([\d.]+), per step time: ([\d.]+)s", proc.stdout, re.M)
    assert match, proc.stdout
    assert float(match.group(1)) == pytest.approx(resumed_run["best_acc"], abs=1e-6)
    top5 = re.search(r"top5_accuracy=([\d.]+), images=(\d+)", proc.stdout)
    assert float(top5.group(1)) >= float(match.group(1)) and int(top5.group(2)) == 90  # 25% of 359, per class


def test_a_checkpoint_of_another_backbone_is_one_sentence_naming_both(resumed_run, run_dir):
    best_ckpt = str(Path(run_dir["out"]) / "best.ckpt")
    for script, key in (("eval.py", "--checkpoint_file_path"), ("train.py", "--resume")):
        proc = _run([script, "--config_path", CONFIG, "--dataset_path", run_dir["data"], key, best_ckpt,
                     "--backbone", "soft_medium", "--output_path", str(Path(run_dir["out"]) / "other")] + COMMON)
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        errors = _error_lines(proc.stderr)
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "soft_tiny" in errors[0] and "soft_medium" in errors[0] and len(errors[0]) < 400, errors[0]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(resumed_run, run_dir):
    out = Path(run_dir["out"])
    last_good = sorted(out.glob(f"soft_tiny-{MAX_EPOCH}_*.ckpt"))[0]
    before = (last_good.stat().st_size, last_good.stat().st_mtime_ns)
    args = ["train.py", "--config_path", CONFIG, "--dataset_path", run_dir["data"], "--output_path", str(out),
            "--resume", str(last_good)] + COMMON
    args[args.index("--max_epoch") + 1] = str(MAX_EPOCH + 2)
    args[args.index("--lr_max") + 1] = "1e6"
    args[args.index("--lr_init") + 1] = "1e6"
    args += ["--lr_decay_mode", "constant", "--clip_grad", "0", "--eval_interval", "1"]
    proc = _run(args)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    match = DIVERGED_RE.search(proc.stderr)
    assert match, proc.stderr[-2000:]
    assert int(match.group(2)) == MAX_EPOCH
    assert Path(match.group(4)) == last_good
    assert not _epochs(proc.stdout)  # no epoch finished, nothing saved
    assert (last_good.stat().st_size, last_good.stat().st_mtime_ns) == before

    from models import create_model, load_weights
    net = create_model("soft_tiny", num_classes=10, depths=(1, 1, 1, 1))
    meta = load_weights(net, str(last_good))
    assert meta["epoch_num"] == MAX_EPOCH
    assert all(np.isfinite(p.asnumpy()).all() for p in net.trainable_params())
