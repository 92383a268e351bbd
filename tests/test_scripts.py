"""Launch scripts (scripts/*.sh).

* every script: no or wrong arguments -> its usage line and exit status 1;
* argument handling with a stand-in interpreter / msrun (PYTHON=..., MSRUN=...): relative paths taken from
  the calling folder, pass-through --key value arguments, per-rank environment and log folders of the
  rank-table launcher, failure of one rank reported;
* run_export.sh and run_eval_cpu.sh for real on a tiny SwiftFormer_XS checkpoint (3 classes, 64 x 64):
  their output lands in the log folder they announce.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
ALL_SCRIPTS = sorted(p.name for p in SCRIPTS.glob("run_*.sh"))
EXPECTED = {"run_standalone_train_ascend.sh", "run_standalone_train_gpu.sh", "run_standalone_train_cpu.sh",
            "run_distribute_train_ascend.sh", "run_distribute_train_gpu.sh", "run_distribute_train_cpu.sh",
            "run_eval_ascend.sh", "run_eval_gpu.sh", "run_eval_cpu.sh", "run_export.sh"}
CONFIG = REPO / "config" / "SOFT_export.yml"

FAKE_PYTHON = """#!/usr/bin/env bash
echo "FAKE cwd=$(pwd) DEVICE_ID=${DEVICE_ID:-} RANK_ID=${RANK_ID:-} RANK_SIZE=${RANK_SIZE:-} TABLE=${RANK_TABLE_FILE:-}"
echo "CPUS $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
echo "ARGS $*"
if [ -n "${FAIL_RANK:-}" ] && [ "${FAIL_RANK}" = "${RANK_ID:-}" ]; then echo "rank failed" >&2; exit 3; fi
exit 0
"""


def _bash(script, *args, cwd, env=None, timeout=120):
    full_env = dict(os.environ)
    full_env.pop("LOG_ROOT", None)
    full_env.update(env or {})
    return subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _usage_failure(proc, script):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"Usage: bash {script}" in proc.stderr, proc.stderr


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def test_every_documented_script_exists_and_sources_common():
    assert EXPECTED <= set(ALL_SCRIPTS)
    for name in ALL_SCRIPTS:
        text = (SCRIPTS / name).read_text()
        assert "common.sh" in text and "Usage: bash " + name in text


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_no_arguments_prints_usage(script, tmp_path):
    _usage_failure(_bash(script, cwd=tmp_path), script)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_missing_config_prints_usage(script, tmp_path):
    args = ["nothere.yml"]
    if script == "run_distribute_train_ascend.sh":
        (tmp_path / "table.json").write_text("{}")
        args = ["table.json", "nothere.yml"]
    elif script == "run_export.sh":
        (tmp_path / "m.ckpt").write_bytes(b"")
        args = ["nothere.yml", "m.ckpt"]
    proc = _bash(script, *args, cwd=tmp_path)
    _usage_failure(proc, script)
    assert "not found: nothere.yml" in proc.stderr


@pytest.mark.parametrize("script,args,message", [
    ("run_export.sh", [CONFIG, "m.ckpt", "PDF"], "FORMAT must be MINDIR, ONNX or AIR"),
    ("run_export.sh", [CONFIG, "absent.ckpt"], "checkpoint not found"),
    ("run_eval_cpu.sh", [CONFIG, "absent.ckpt"], "checkpoint not found"),
    ("run_distribute_train_gpu.sh", [CONFIG, "eight"], "DEVICE_NUM must be a positive integer"),
    ("run_distribute_train_cpu.sh", [CONFIG, "0"], "WORKERS must be a positive integer"),
    ("run_standalone_train_cpu.sh", [CONFIG, "stray"], "unexpected argument 'stray'"),
    ("run_distribute_train_ascend.sh", ["table.json", CONFIG], "not a usable rank table"),
])
def test_wrong_arguments_print_usage(script, args, message, tmp_path):
    (tmp_path / "m.ckpt").write_bytes(b"")
    (tmp_path / "table.json").write_text('{"no": "servers"}')
    proc = _bash(script, *args, cwd=tmp_path)
    _usage_failure(proc, script)
    assert message in proc.stderr


def test_standalone_train_passes_arguments(tmp_path, fake_python):
    (tmp_path / "cfg.yml").write_text(CONFIG.read_text())
    (tmp_path / "data").mkdir()
    proc = _bash("run_standalone_train_ascend.sh", "cfg.yml", "--dataset_path", "data", "--max_epoch=2",
                 "--output_path=data", cwd=tmp_path, env={"PYTHON": str(fake_python), "DEVICE_ID": "3"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log_dir = tmp_path / "logs" / "train_standalone_ascend"
    assert f"Log folder: {log_dir}" in proc.stdout
    args = re.search(r"^ARGS (.*)$", proc.stdout, re.M).group(1).split()
    assert args[:3] == ["train.py", "--config_path", str(tmp_path / "cfg.yml")]
    assert "--device_target Ascend" in " ".join(args) and "--device_id 3" in " ".join(args)
    assert "--run_distribute False" in " ".join(args)
    assert f"--dataset_path {tmp_path / 'data'}" in " ".join(args)
    assert "--max_epoch=2" in args and f"--output_path={tmp_path / 'data'}" in args
    assert f"cwd={REPO}" in proc.stdout  # config-relative paths mean what they mean from the repository root
    assert "ARGS train.py" in (log_dir / "log.txt").read_text()


@pytest.mark.parametrize("script,count,target", [("run_distribute_train_gpu.sh", "4", "GPU"),
                                                 ("run_distribute_train_cpu.sh", None, "CPU")])
def test_msrun_launchers(script, count, target, tmp_path, fake_python):
    args = [CONFIG] + ([count] if count else []) + ["--batch_size", "16"]
    proc = _bash(script, *args, cwd=tmp_path, env={"MSRUN": str(fake_python)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = count or "2"
    log_dir = tmp_path / "logs" / f"train_parallel_{target.lower()}"
    line = re.search(r"^ARGS (.*)$", proc.stdout, re.M).group(1)
    assert f"--worker_num={n} --local_worker_num={n}" in line
    assert f"--log_dir={log_dir}" in line
    assert f"train.py --config_path {CONFIG} --device_target {target} --run_distribute True --batch_size 16" in line
    assert (log_dir / "log.txt").is_file()


def _rank_table(path, devices):
    table = {"version": "1.0", "server_count": "1", "status": "completed",
             "server_list": [{"server_id": "10.0.0.1",
                              "device": [{"device_id": str(d), "device_ip": f"192.168.0.{d}", "rank_id": str(r)}
                                         for d, r in devices]}]}
    path.write_text(json.dumps(table))


def test_rank_table_launcher_runs_one_process_per_device(tmp_path, fake_python):
    _rank_table(tmp_path / "hccl_2p.json", [(4, 0), (5, 1)])
    proc = _bash("run_distribute_train_ascend.sh", "hccl_2p.json", CONFIG, "--epoch_size", "1", cwd=tmp_path,
                 env={"PYTHON": str(fake_python)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log_dir = tmp_path / "logs" / "train_parallel_ascend"
    cpus = set()
    for device, rank in ((4, 0), (5, 1)):
        text = (log_dir / f"rank_{rank}" / "log.txt").read_text()
        assert f"DEVICE_ID={device} RANK_ID={rank} RANK_SIZE=2 TABLE={tmp_path / 'hccl_2p.json'}" in text
        assert "--device_target Ascend --run_distribute True --epoch_size 1" in text
        cpus.add(re.search(r"^CPUS (.*)$", text, re.M).group(1))
    if (os.cpu_count() or 1) >= 2 and subprocess.run(["which", "taskset"], capture_output=True).returncode == 0:
        assert len(cpus) == 2  # each rank bound to its own cores


def test_rank_table_launcher_reports_a_failed_rank(tmp_path, fake_python):
    _rank_table(tmp_path / "t.json", [(0, 0), (1, 1)])
    proc = _bash("run_distribute_train_ascend.sh", "t.json", CONFIG, cwd=tmp_path,
                 env={"PYTHON": str(fake_python), "FAIL_RANK": "1"})
    assert proc.returncode == 3
    assert "rank 1 failed (exit status 3)" in proc.stderr


# ------------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """A caller folder with a SwiftFormer_XS checkpoint (3 classes) and a 3-class ImageFolder."""
    root = tmp_path_factory.mktemp("script_job")
    code = (
        "import os, sys, json\n"
        "os.environ.setdefault('ONEDNN_MAX_CPU_ISA', 'AVX2')\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import mindspore as ms\n"
        "from models import create_model\n"
        "ms.set_seed(0)\n"
        "net = create_model('SwiftFormer_XS', num_classes=3, fused_kernels=False)\n"
        "ms.save_checkpoint(net, 'tiny.ckpt', append_dict={'class_names': json.dumps(['a', 'b', 'c'])})\n"
        "from PIL import Image\n"
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "for split in ('train', 'val'):\n"
        "    for c in 'abc':\n"
        "        os.makedirs(f'ds/{split}/{c}', exist_ok=True)\n"
        "        for k in range(2):\n"
        "            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(f'ds/{split}/{c}/{k}.png')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return root


def test_run_export_writes_into_its_log_folder(tiny_job):
    proc = _bash("run_export.sh", CONFIG, "tiny.ckpt", "mindir", "--backbone", "SwiftFormer_XS", "--class_num", 3,
                 "--eval_image_size", 64, "--file_name", "tiny", cwd=tiny_job, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log_dir = tiny_job / "logs" / "export"
    assert f"Log folder: {log_dir}" in proc.stdout
    assert (log_dir / "tiny.mindir").is_file()
    assert json.loads((log_dir / "tiny.mindir.classes.json").read_text()) == ["a", "b", "c"]
    assert f"exported SwiftFormer_XS ({tiny_job / 'tiny.ckpt'}) to {log_dir / 'tiny.mindir'}" in \
        (log_dir / "log.txt").read_text()


def test_run_eval_cpu_prints_accuracy_into_its_log(tiny_job):
    proc = _bash("run_eval_cpu.sh", REPO / "config" / "SOFT_eval.yml", "tiny.ckpt", "--backbone", "SwiftFormer_XS",
                 "--class_num", 3, "--eval_image_size", 64, "--dataset_path", "ds", "--eval_batch_size", 4,
                 "--eval_num_workers", 1, cwd=tiny_job, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = tiny_job / "logs" / "eval_cpu" / "log.txt"
    assert f"Log folder: {log.parent}" in proc.stdout
    text = log.read_text()
    assert re.search(r"^accuracy=\d\.\d{6}", text, re.M), text
    assert "--device_target CPU" in text and f"--dataset_path {tiny_job / 'ds'}" in text
