"""Data-parallel training on 2 CPU workers through msrun: identical weights on both ranks, and the
distributed evaluation counts every image once and gives the single-process accuracy."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from helpers import REPO
from src.dataset import create_dataset
from src.eval_engine import EvalEngine
from src.model_utils.config import make_config
from src.trainer import build_network

pytestmark = pytest.mark.skipif(shutil.which("msrun") is None, reason="msrun (MindSpore's launcher) not on PATH")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_workers_train_identically_and_evaluate_exactly(digits_root, tmp_path):
    from distributed_worker import WORKER_CONFIG

    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # workers use the first python
    cmd = ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}", "--join=True",
           f"--log_dir={tmp_path / 'msrun_logs'}", str(REPO / "tests" / "distributed_worker.py"),
           str(digits_root), str(out), "3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (tmp_path / "msrun_logs").glob("*.log"))
    assert proc.returncode == 0, f"msrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs}"

    rank0, rank1 = np.load(out / "rank0.npz"), np.load(out / "rank1.npz")
    assert set(rank0.files) == set(rank1.files)
    for name in rank0.files:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1] and results[0]["rank_size"] == 2

    # the same weights evaluated by one process
    ms.set_context(mode=ms.GRAPH_MODE)
    config = make_config(dict(WORKER_CONFIG, dataset_path=str(digits_root), run_distribute=False))
    eval_ds, _ = create_dataset(config, False)
    net = build_network(config)
    ms.load_param_into_net(net, ms.load_checkpoint(str(out / "trained.ckpt")), strict_load=True)
    single = EvalEngine(net, eval_ds, 1).evaluate()
    assert results[0]["count"] == single["count"]
    assert results[0]["top1"] == pytest.approx(float(single["top1"]), abs=1e-9)
