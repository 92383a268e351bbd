"""A per-model config (config/soft_tiny.yml, unchanged) as a user runs it, on the digits.

* One device: ``python train.py --config_path config/soft_tiny.yml`` with DATA_PATH set (the config's
  ``$DATA_PATH/imagenet``) trains alone (``run_distribute: auto``); the same file under
  ``scripts/run_distribute_train_cpu.sh`` trains data-parallel on 2 msrun workers.
* Evaluation equals training's: the config trains with EMA and keeps ``best.ckpt`` by the EMA weights'
  accuracy, evaluated with crop_pct 0.9 bicubic; eval.py with ``config/SOFT_eval.yml`` (crop 0.875,
  bilinear, no EMA) prints exactly the accuracy of the training log's best epoch line, and export.py /
  infer.py take the same weights and preprocessing.
* Mistakes: ``run_distribute: 1`` without a launcher and an unset DATA_PATH are one sentence each.

Overridden for a CPU test only: device, amp level (float32 on CPU), sizes (32 px, one block per stage,
a quarter of the images, 2 epochs) and the EMA decay (0.9: a few steps must move the average).
"""
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

pytestmark = pytest.mark.cli

CONFIG = "config/soft_tiny.yml"
#: what a CPU test must change: device and float32 (the script sets the device itself), sizes, EMA decay
DEVICE = ["--device_target", "CPU", "--amp_level", "O0"]
SIZES = ["--class_num", "10", "--train_image_size", "32", "--eval_image_size", "32", "--batch_size", "32",
         "--eval_batch_size", "64", "--warmup_epochs", "1", "--dataset_fraction", "0.25", "--model_args",
         "depths=[1,1,1,1]", "--model_ema_decay", "0.9", "--train_num_workers", "1", "--eval_num_workers", "1"]
CPU_TEST = DEVICE + SIZES + ["--max_epoch", "2"]
EPOCH_RE = re.compile(r"epoch\[(\d+)\], .*accuracy=([\d.]+), eval_cost")
ACCURACY_RE = re.compile(r"^accuracy=([\d.]+), per step time", re.M)


def _env(data_path=None, **extra):
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1", PYTHON=sys.executable)
    env.pop("DATA_PATH", None)
    if data_path is not None:
        env["DATA_PATH"] = str(data_path)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # msrun's workers: this python
    env.update(extra)
    return env


def _run(args, env, cwd=REPO, timeout=600):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _error_lines(text):
    return [line for line in text.splitlines() if line.startswith("ERROR:")]


@pytest.fixture(scope="module")
def data_path(digits_root, tmp_path_factory):
    """A DATA_PATH folder whose imagenet/ is the digits ImageFolder (the config's $DATA_PATH/imagenet)."""
    root = tmp_path_factory.mktemp("data_path")
    (root / "imagenet").symlink_to(digits_root, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def alone(data_path, tmp_path_factory):
    """``python train.py --config_path config/soft_tiny.yml`` in one process."""
    out = tmp_path_factory.mktemp("alone")
    proc = _run([sys.executable, "train.py", "--config_path", CONFIG, "--output_path", str(out)] + CPU_TEST,
                _env(data_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    epochs = [m.groups() for m in map(EPOCH_RE.search, proc.stdout.splitlines()) if m]
    assert [int(e) for e, _ in epochs] == [0, 1], proc.stdout[-3000:]
    best = max(float(a) for _, a in epochs)
    return {"out": out, "log": proc.stdout, "best_line_accuracy": f"{best:.6f}",
            "ckpt": out / "outputs" / "soft_tiny" / "best.ckpt"}


@pytest.mark.slow
def test_per_model_config_trains_alone_with_data_path(alone):
    assert "standalone training" in alone["log"]
    assert "--> run_distribute: auto" in alone["log"]
    assert alone["ckpt"].is_file()


@pytest.mark.slow
def test_checkpoint_records_how_its_accuracy_was_measured(alone):
    from models.checkpoint import read_checkpoint

    contents = read_checkpoint(str(alone["ckpt"]))
    assert contents.meta["eval_config"] == {"model_ema": True, "eval_image_size": 32, "crop_pct": 0.9,
                                            "eval_interpolation": "bicubic"}
    assert f"{contents.meta['best_acc']:.6f}" == alone["best_line_accuracy"]
    # the EMA weights are not the raw ones: evaluating the raw weights would be another model
    differ = [k for k in contents.weights if not np.array_equal(contents.weights[k].asnumpy(),
                                                                  contents.ema[k].asnumpy())]
    assert len(differ) > len(contents.weights) // 2


@pytest.mark.slow
def test_eval_with_the_eval_config_prints_the_training_accuracy(alone, digits_root):
    """SOFT_eval.yml says crop_pct 0.875, bilinear, 224 and no EMA; the checkpoint's record wins."""
    common = [sys.executable, "eval.py", "--config_path", "config/SOFT_eval.yml", "--device_target", "CPU",
              "--dataset_path", str(digits_root), "--class_num", "10", "--model_args", "depths=[1,1,1,1]",
              "--dataset_fraction", "0.25", "--eval_num_workers", "1", "--checkpoint_file_path", str(alone["ckpt"])]
    proc = _run(common, _env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ACCURACY_RE.search(proc.stdout).group(1) == alone["best_line_accuracy"], proc.stdout
    for line in ("the EMA weights, eval_image_size 32, crop_pct 0.9, eval_interpolation bicubic",
                 "model_ema: true from the checkpoint (the default says false",
                 "crop_pct: 0.9 from the checkpoint (the config file says 0.875",
                 "eval_image_size: 32 from the checkpoint (the config file says 224",
                 "eval_interpolation: bicubic from the checkpoint (the config file's interpolation says bilinear"):
        assert line in proc.stdout, proc.stdout

    given = _run(common + ["--crop_pct", "1.0", "--model_ema", "0"], _env())
    assert given.returncode == 0, given.stdout[-3000:] + given.stderr[-3000:]
    assert "crop_pct: 1.0 from the command line (the checkpoint measured its accuracy with crop_pct 0.9)" \
        in given.stdout
    assert "model_ema: false from the command line (the checkpoint measured its accuracy with the EMA weights)" \
        in given.stdout


@pytest.mark.slow
def test_export_and_infer_use_the_recorded_weights_and_preprocessing(alone, digits_root, tmp_path):
    export = _run([sys.executable, "export.py", "--config_path", "config/SOFT_export.yml", "--ckpt_file",
                   str(alone["ckpt"]), "--class_num", "10", "--model_args", "depths=[1,1,1,1]", "--output_path",
                   str(tmp_path), "--file_name", "tiny"], _env())
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert "input float32 [1, 3, 32, 32]" in export.stdout and "model_ema: true from the checkpoint" in export.stdout
    sidecar = tmp_path / "tiny.mindir.eval_config.json"
    assert sidecar.read_text().strip() == '{"eval_image_size": 32, "crop_pct": 0.9, "eval_interpolation": "bicubic"}'

    images = [str(digits_root / "val" / str(c) / sorted(os.listdir(digits_root / "val" / str(c)))[0])
              for c in range(3)]
    common = [sys.executable, "infer.py", "--config_path", "config/SOFT_export.yml", "--class_num", "10",
              "--model_args", "depths=[1,1,1,1]", "--topk", "1"]
    by_mindir = _run(common + ["--mindir", str(tmp_path / "tiny.mindir")] + images, _env())
    by_ckpt = _run(common + ["--checkpoint", str(alone["ckpt"])] + images, _env())
    for proc in (by_mindir, by_ckpt):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "crop_pct: 0.9 from the" in proc.stderr and "crop_pct" not in proc.stdout
    top = [re.findall(r"^  1\. (.+)  ([\d.]+)$", p.stdout, re.M) for p in (by_mindir, by_ckpt)]
    assert len(top[0]) == 3 and [t[0] for t in top[0]] == [t[0] for t in top[1]]
    np.testing.assert_allclose([float(t[1]) for t in top[0]], [float(t[1]) for t in top[1]], atol=1e-5)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("msrun") is None, reason="msrun (MindSpore's launcher) not on PATH")
def test_same_config_under_the_msrun_launcher_script(data_path, tmp_path):
    env = _env(data_path, LOG_ROOT=str(tmp_path / "logs"), MASTER_PORT=str(_free_port()))
    proc = _run(["bash", "scripts/run_distribute_train_cpu.sh", CONFIG, "2", "--output_path", str(tmp_path / "out"),
                 "--amp_level", "O0", "--max_epoch", "1", "--eval_interval", "0"] + SIZES, env, timeout=900)
    worker0 = tmp_path / "logs" / "train_parallel_cpu" / "worker_0.log"
    assert proc.returncode == 0, proc.stdout[-3000:] + (worker0.read_text()[-3000:] if worker0.exists() else "")
    assert "distributed training: rank 0 of 2" in worker0.read_text()
    assert list((tmp_path / "out" / "outputs" / "soft_tiny").glob("soft_tiny-1_*.ckpt"))


def test_run_distribute_true_without_a_launcher_is_one_sentence(data_path):
    proc = _run([sys.executable, "train.py", "--config_path", CONFIG, "--run_distribute", "1"] + CPU_TEST,
                _env(data_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert _error_lines(proc.stderr) == [
        "ERROR: run_distribute is true (on the command line) but this process was not started by a launcher (msrun, "
        "mpirun or a rank table): start it with scripts/run_distribute_train_*.sh, or set --run_distribute auto "
        "(the default) to train on one device."]


def test_unset_data_path_is_one_sentence_naming_it(tmp_path):
    proc = _run([sys.executable, "train.py", "--config_path", CONFIG, "--output_path", str(tmp_path)] + CPU_TEST,
                _env())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and "DATA_PATH is not set" in errors[0] and "'dataset_path'" in errors[0], proc.stderr
