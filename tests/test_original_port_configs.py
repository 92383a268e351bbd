"""The original MindSpore port's four config files (fudan-zvg/SOFT_MindSpore_Ascend) run unchanged.

Config files (../shared/fixtures/original_port/config, unchanged; overridden only: data paths, device, sizes
and epochs a CPU test needs; its amp O3 is kept):

* SOFT_config.yml: ``$DATA_PATH/imagenet/train`` and ``.../val``, ``run_distribute: 1``: trains through
  scripts/run_standalone_train_cpu.sh; a plain ``python train.py`` is one sentence (no launcher);
* SOFT_eval.yml / SOFT_export.yml: name the checkpoint with ``pretrained:`` (``./checkpoint/soft_tiny.ckpt``,
  ``./soft_tiny.ckpt``, relative to the folder they run from): eval.py and export.py find it there;
* SOFT_tiny_cloud_graph_ascend_O3.yml: a ModelArts job (fake moxing, ``s3://`` bucket) whose dataset was
  uploaded as ``train/*.tar`` and ``val/*.tar``, as the port's README says; unpacked on the job's machine,
  trained under scripts/run_distribute_train_cpu.sh, the output copied back to ``train_url``.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile

import pytest

from helpers import REPO

pytestmark = pytest.mark.cli

PORT_CONFIGS = REPO.parent / "shared" / "fixtures" / "original_port" / "config"
requires_port_configs = pytest.mark.skipif(not (PORT_CONFIGS / "SOFT_config.yml").is_file(),
                                           reason=f"the original port's config files not found in {PORT_CONFIGS}")
#: what a CPU test changes besides data paths and device: sizes and epochs
SIZES = ["--class_num", "10", "--train_image_size", "32", "--eval_image_size", "32", "--batch_size", "32",
         "--eval_batch_size", "40", "--max_epoch", "1", "--warmup_epochs", "0", "--train_num_workers", "1",
         "--eval_num_workers", "1"]


def _env(**extra):
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1", PYTHON=sys.executable)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # msrun's workers: this python
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(args, env, cwd=REPO, timeout=900):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def data_path(digits_root, tmp_path_factory):
    """DATA_PATH for the port's ``$DATA_PATH/imagenet/train``: imagenet/ is the digits ImageFolder."""
    root = tmp_path_factory.mktemp("port_data")
    (root / "imagenet").symlink_to(digits_root, target_is_directory=True)
    return root


@requires_port_configs
def test_training_config_without_a_launcher_is_one_sentence(data_path):
    proc = _run([sys.executable, "train.py", "--config_path", PORT_CONFIGS / "SOFT_config.yml"],
                _env(DATA_PATH=data_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "run_distribute is true (in " in errors[0] and "SOFT_config.yml" in errors[0]
    assert "scripts/run_distribute_train_*.sh" in errors[0]


@pytest.fixture(scope="module")
def port_trained(data_path, tmp_path_factory):
    """SOFT_config.yml through scripts/run_standalone_train_cpu.sh: full soft_tiny, amp O3, 2 steps."""
    out = tmp_path_factory.mktemp("port_train")
    proc = _run(["bash", "scripts/run_standalone_train_cpu.sh", PORT_CONFIGS / "SOFT_config.yml",
                 "--output_path", out, "--dataset_fraction", "0.05"] + SIZES,
                _env(DATA_PATH=data_path, LOG_ROOT=out / "logs"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "standalone training" in proc.stdout and "--> amp_level: O3" in proc.stdout
    accuracy = re.search(r"epoch\[0\], .*accuracy=([\d.]+), eval_cost", proc.stdout)
    assert accuracy, proc.stdout[-3000:]
    ckpt = out / "outputs" / "best.ckpt"
    assert ckpt.is_file()
    return {"ckpt": ckpt, "accuracy": accuracy.group(1)}


@requires_port_configs
@pytest.mark.slow
def test_eval_config_finds_its_checkpoint_by_pretrained(port_trained, digits_root, tmp_path):
    """Run from a folder holding ./checkpoint/soft_tiny.ckpt, as the port's SOFT_eval.yml expects."""
    (tmp_path / "checkpoint").mkdir()
    shutil.copyfile(port_trained["ckpt"], tmp_path / "checkpoint" / "soft_tiny.ckpt")
    proc = _run([sys.executable, REPO / "eval.py", "--config_path", PORT_CONFIGS / "SOFT_eval.yml",
                 "--device_target", "CPU", "--eval_path", digits_root / "val", "--class_num", "10",
                 "--dataset_fraction", "0.05", "--eval_num_workers", "1"], _env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checkpoint: ./checkpoint/soft_tiny.ckpt (from pretrained)" in proc.stdout
    assert "eval_image_size: 32 from the checkpoint (the config file says 224" in proc.stdout
    assert re.search(r"^accuracy=[\d.]+, per step time", proc.stdout, re.M), proc.stdout


@requires_port_configs
@pytest.mark.slow
def test_export_config_finds_its_checkpoint_by_pretrained(port_trained, tmp_path):
    shutil.copyfile(port_trained["ckpt"], tmp_path / "soft_tiny.ckpt")
    proc = _run([sys.executable, REPO / "export.py", "--config_path", PORT_CONFIGS / "SOFT_export.yml",
                 "--device_target", "CPU", "--class_num", "10", "--output_path", tmp_path / "out"], _env(),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checkpoint: ./soft_tiny.ckpt (from pretrained)" in proc.stdout
    assert f"to {tmp_path / 'out' / 'soft_tiny.mindir'}: MINDIR, input float32 [1, 3, 32, 32]" in proc.stdout
    assert (tmp_path / "out" / "soft_tiny.mindir").is_file()


def _tar(path, root, per_class):
    """A tar of ``root``'s class folders with the first ``per_class`` images each (paths relative to root)."""
    with tarfile.open(path, "w") as archive:
        for cls in sorted(os.listdir(root)):
            for name in sorted(os.listdir(root / cls))[:per_class]:
                archive.add(root / cls / name, arcname=f"{cls}/{name}")


@requires_port_configs
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("msrun") is None, reason="msrun (MindSpore's launcher) not on PATH")
def test_cloud_config_as_a_modelarts_job_with_tar_uploads(digits_root, tmp_path):
    obs = tmp_path / "obs"
    uploaded = obs / "bucket-d" / "datasets" / "imagenet"  # the config's data_url s3://bucket-d/datasets/imagenet
    (uploaded / "train").mkdir(parents=True)
    (uploaded / "val").mkdir()
    _tar(uploaded / "train" / "imagenet_train.tar", digits_root / "train", 4)
    _tar(uploaded / "val" / "imagenet_val.tar", digits_root / "val", 2)
    local = tmp_path / "cache"  # the job machine's /cache (data_path, output_path of the config)
    env = _env(PYTHONPATH=REPO / "tests" / "fake_moxing", FAKE_OBS_ROOT=obs, MOXING_LOCK_DIR=tmp_path / "locks",
               JOB_ID=f"port_cloud_{os.getpid()}", LOG_ROOT=tmp_path / "logs", MASTER_PORT=_free_port())
    proc = _run(["bash", "scripts/run_distribute_train_cpu.sh", PORT_CONFIGS / "SOFT_tiny_cloud_graph_ascend_O3.yml",
                 "1", "--data_path", local / "datasets" / "imagenet",
                 "--dataset_path", local / "datasets" / "imagenet" / "train",
                 "--eval_path", local / "datasets" / "imagenet" / "val", "--output_path", local / "train",
                 "--save_checkpoint_path", local / "train"] + SIZES, env)
    worker = tmp_path / "logs" / "train_parallel_cpu" / "worker_0.log"
    log = worker.read_text(errors="replace") if worker.exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + log[-4000:]
    data = local / "datasets" / "imagenet"
    for split in ("train", "val"):
        assert f"[moxing] unpacked {data / split / f'imagenet_{split}.tar'} into {data / split}" in log
        assert not (data / split / f"imagenet_{split}.tar").exists()
        assert sorted(os.listdir(data / split)) == [str(c) for c in range(10)]
    assert re.search(r"epoch\[0\], .*accuracy=", log), log[-3000:]
    assert (obs / "bucket-d" / "train" / "best.ckpt").is_file()  # train_url s3://bucket-d/train
