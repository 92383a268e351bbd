"""Launch scripts (scripts/*.sh).

* every script: no or wrong arguments -> its usage line and exit status 1;
* argument handling with a stand-in interpreter / msrun / srun (PYTHON=..., MSRUN=..., SRUN=...): relative
  paths taken from the calling folder, pass-through --key value arguments, the multi-node form of the msrun
  launchers (positional or environment), the Slurm example's one msrun per node, per-rank environment and
  log folders of the rank-table launcher, this server's devices picked from a multi-server table, failure
  of one rank reported;
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

pytestmark = pytest.mark.cli

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
ALL_SCRIPTS = sorted(p.name for p in SCRIPTS.glob("run_*.sh"))
EXPECTED = {"run_standalone_train_ascend.sh", "run_standalone_train_gpu.sh", "run_standalone_train_cpu.sh",
            "run_distribute_train_ascend.sh", "run_distribute_train_gpu.sh", "run_distribute_train_cpu.sh",
            "run_eval_ascend.sh", "run_eval_gpu.sh", "run_eval_cpu.sh", "run_export.sh",
            "run_eval_onnx_cpu.sh", "run_eval_onnx_gpu.sh"}
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
    elif script.startswith("run_eval_onnx"):
        (tmp_path / "m.onnx").write_bytes(b"")
        args = ["nothere.yml", "m.onnx"]
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
    ("run_eval_onnx_cpu.sh", [CONFIG], "missing CONFIG and/or ONNX_FILE"),
    ("run_eval_onnx_gpu.sh", [CONFIG, "absent.onnx"], "ONNX file not found"),
    ("run_distribute_train_cpu.sh", [CONFIG, "4", "2", "0"], "MASTER_ADDR (the address of node 0) is needed"),
    ("run_distribute_train_cpu.sh", [CONFIG, "4", "2", "2", "10.0.0.1"], "NODE_RANK 2 is out of range"),
    ("run_distribute_train_cpu.sh", [CONFIG, "2", "4"], "LOCAL_WORKERS (4) cannot exceed WORKERS (2)"),
    ("run_distribute_train_cpu.sh", [CONFIG, "2", "2", "1"], "NODE_RANK must be 0 when all 2 workers run on this node"),
    ("run_distribute_train_gpu.sh", [CONFIG, "16", "8", "one", "10.0.0.1"], "NODE_RANK must be a non-negative integer"),
    ("run_distribute_train_gpu.sh", [CONFIG, "16", "8", "1", "10.0.0.1", "80"], "MASTER_PORT must be a port number"),
    ("run_distribute_train_gpu.sh", [CONFIG, "16", "8", "1", "10.0.0.1", "9000", "stray"], "unexpected argument 'stray'"),
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
    proc = _bash(script, *args, cwd=tmp_path, env={"MSRUN": str(fake_python), "MASTER_ADDR": "10.9.9.9"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = count or "2"
    log_dir = tmp_path / "logs" / f"train_parallel_{target.lower()}"
    line = re.search(r"^ARGS (.*)$", proc.stdout, re.M).group(1)
    assert f"--worker_num={n} --local_worker_num={n}" in line
    assert f"--log_dir={log_dir}" in line
    assert f"train.py --config_path {CONFIG} --device_target {target} --run_distribute True --batch_size 16" in line
    assert (log_dir / "log.txt").is_file()
    # one node: the scheduler is here, whatever MASTER_ADDR the environment holds
    assert "--node_rank=0 --master_addr=127.0.0.1 --master_port=8118" in line


@pytest.mark.parametrize("how", ["positional", "environment"])
def test_msrun_launchers_multi_node(how, tmp_path, fake_python):
    """Node 1 of 2 (8 GPUs each): the same msrun command line from arguments or from environment variables."""
    env = {"MSRUN": str(fake_python), "CLUSTER_TIME_OUT": "900"}
    args = [CONFIG]
    if how == "positional":
        args += ["16", "8", "1", "10.0.0.1", "9000"]
        env.update(WORKER_NUM="99", NODE_RANK="7")  # the arguments win over the environment
    else:
        env.update(WORKER_NUM="16", LOCAL_WORKER_NUM="8", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="9000")
    proc = _bash("run_distribute_train_gpu.sh", *args, "--batch_size", "16", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log_dir = tmp_path / "logs" / "train_parallel_gpu_node1"
    assert "Node 1 of 2: workers 8 to 15 of 16; master 10.0.0.1:9000" in proc.stdout
    line = re.search(r"^ARGS (.*)$", proc.stdout, re.M).group(1)
    assert ("--worker_num=16 --local_worker_num=8 --node_rank=1 --master_addr=10.0.0.1 --master_port=9000 "
            f"--log_dir={log_dir} --join=True --cluster_time_out=900 train.py") in line
    assert line.endswith("--device_target GPU --run_distribute True --batch_size 16")
    assert (log_dir / "log.txt").is_file()


FAKE_SRUN = """#!/usr/bin/env bash
# stand-in srun: runs the task once per node, one after the other, with that node's SLURM_NODEID
nodes=1
while [[ "$1" == --* ]]; do
    case "$1" in --nodes=*) nodes="${1#--nodes=}" ;; esac
    echo "SRUN_OPTION $1"
    shift
done
status=0
for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i "$@" || status=$?; done
exit $status
"""


def test_slurm_example_starts_one_msrun_per_node(tmp_path, fake_python):
    srun, scontrol = tmp_path / "srun", tmp_path / "scontrol"
    srun.write_text(FAKE_SRUN)
    scontrol.write_text('#!/usr/bin/env bash\n[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ] && printf "gpu-07\\ngpu-08\\n"\n')
    for path in (srun, scontrol):
        path.chmod(0o755)
    env = {"SRUN": str(srun), "SCONTROL": str(scontrol), "MSRUN": str(fake_python), "SLURM_JOB_NODELIST": "gpu-[07-08]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242", "SLURM_GPUS_ON_NODE": "4"}
    (tmp_path / "cfg.yml").write_text(CONFIG.read_text())
    proc = subprocess.run(["bash", str(SCRIPTS / "slurm_train.sh"), "cfg.yml", "--max_epoch", "2"], cwd=tmp_path,
                          env=dict(os.environ, **env), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 node(s) x 4 GPU workers; master gpu-07:14242" in proc.stdout
    assert "SRUN_OPTION --nodes=2" in proc.stdout and "SRUN_OPTION --ntasks-per-node=1" in proc.stdout
    for node in (0, 1):
        log = (tmp_path / "logs" / f"train_parallel_gpu_node{node}" / "log.txt").read_text()
        line = re.search(r"^ARGS (.*)$", log, re.M).group(1)
        assert f"--worker_num=8 --local_worker_num=4 --node_rank={node} --master_addr=gpu-07 --master_port=14242" in line
        assert f"train.py --config_path {tmp_path / 'cfg.yml'} --device_target GPU --run_distribute True --max_epoch 2" in line


def test_slurm_example_outside_an_allocation(tmp_path):
    env = dict(os.environ)
    env.pop("SLURM_JOB_NODELIST", None)
    proc = subprocess.run(["bash", str(SCRIPTS / "slurm_train.sh"), str(CONFIG)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    _usage_failure(proc, "slurm_train.sh")
    assert "not inside a Slurm allocation" in proc.stderr


def test_run_eval_onnx_passes_arguments(tmp_path, fake_python):
    (tmp_path / "m.onnx").write_bytes(b"")
    proc = _bash("run_eval_onnx_gpu.sh", CONFIG, "m.onnx", "--eval_batch_size", "4", cwd=tmp_path,
                 env={"PYTHON": str(fake_python), "DEVICE_ID": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log_dir = tmp_path / "logs" / "eval_onnx_gpu"
    assert f"Log folder: {log_dir}" in proc.stdout
    line = re.search(r"^ARGS (.*)$", proc.stdout, re.M).group(1)
    assert line == (f"eval_onnx.py --config_path {CONFIG} --onnx_path {tmp_path / 'm.onnx'} --device_target GPU "
                    "--device_id 2 --eval_batch_size 4")
    assert "ONNX evaluation finished" in proc.stdout and "ARGS eval_onnx.py" in (log_dir / "log.txt").read_text()


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


def _two_server_table(path):
    """Two servers of two devices each: 10.0.0.1 holds ranks 0 and 1, 10.0.0.2 ranks 2 and 3."""
    table = {"version": "1.0", "server_count": "2", "status": "completed",
             "server_list": [{"server_id": f"10.0.0.{s + 1}",
                              "device": [{"device_id": str(d), "device_ip": f"192.168.{s}.{d}", "rank_id": str(2 * s + d)}
                                         for d in (0, 1)]} for s in (0, 1)]}
    path.write_text(json.dumps(table))


@pytest.mark.parametrize("env,server,ranks", [
    ({"SERVER_ID": "10.0.0.2"}, "10.0.0.2", (2, 3)),
    ({"SERVER_INDEX": "1"}, "10.0.0.2", (2, 3)),
    ({"LOCAL_IPS": "172.16.0.9 10.0.0.1"}, "10.0.0.1", (0, 1)),  # the server_id that is an address of this machine
])
def test_rank_table_launcher_starts_only_this_servers_devices(env, server, ranks, tmp_path, fake_python):
    _two_server_table(tmp_path / "hccl_4p.json")
    proc = _bash("run_distribute_train_ascend.sh", "hccl_4p.json", CONFIG, cwd=tmp_path,
                 env=dict(env, PYTHON=str(fake_python)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"RANK_SIZE=4; server {server}: 2 process(es)" in proc.stdout
    log_dir = tmp_path / "logs" / "train_parallel_ascend"
    assert sorted(p.name for p in log_dir.glob("rank_*")) == [f"rank_{r}" for r in ranks]
    for device, rank in zip((0, 1), ranks):
        assert f"DEVICE_ID={device} RANK_ID={rank} RANK_SIZE=4" in (log_dir / f"rank_{rank}" / "log.txt").read_text()


@pytest.mark.parametrize("env,message", [
    ({"LOCAL_IPS": "172.16.0.9"}, "(servers: 10.0.0.1, 10.0.0.2; matching an address of this machine: none); "
                                  "set SERVER_ID to this server's server_id"),
    ({"SERVER_ID": "10.0.0.9"}, "SERVER_ID 10.0.0.9 is not in"),
    ({"SERVER_INDEX": "2"}, "SERVER_INDEX 2 is not a server of"),
])
def test_rank_table_launcher_without_this_server(env, message, tmp_path, fake_python):
    _two_server_table(tmp_path / "hccl_4p.json")
    proc = _bash("run_distribute_train_ascend.sh", "hccl_4p.json", CONFIG, cwd=tmp_path,
                 env=dict(env, PYTHON=str(fake_python)))
    _usage_failure(proc, "run_distribute_train_ascend.sh")
    assert message in proc.stderr
    assert not (tmp_path / "logs" / "train_parallel_ascend").exists()


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
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import mindspore as ms\n"
        "from models import create_model\n"
        "ms.set_seed(0)\n"
        "net = create_model('SwiftFormer_XS', num_classes=3)\n"
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
