"""Data-parallel training through train.py on 2 CPU workers (msrun): the ranks share the output folder (rank 0
owns it for the job), both ranks end with bitwise identical weights and BatchNorm statistics, and the
distributed evaluation counts every image once and gives the accuracy one process gets on the saved weights."""
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO
from models.checkpoint import META_KEYS
from src.locks import RUN_LOCK_NAME

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("msrun") is None, reason="msrun (MindSpore's launcher) not on PATH")]

ARGS = ["--config_path", "config/SOFT_tiny_demo_cpu.yml", "--train_image_size", "32", "--eval_image_size", "32",
        "--dataset_fraction", "0.2", "--batch_size", "16", "--eval_batch_size", "16", "--max_epoch", "2",
        "--warmup_epochs", "0", "--lr_max", "3e-4", "--train_num_workers", "1", "--eval_num_workers", "1",
        "--log_interval", "0", "--model_args", "depths=[1,1,2,1]"]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_workers_train_identically_and_evaluate_exactly(digits_root, tmp_path):
    import mindspore as ms

    out = tmp_path / "out"
    env = dict(os.environ, GLOG_v="3")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # workers use this python
    cmd = ["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}", "--join=True",
           f"--log_dir={tmp_path / 'msrun_logs'}", "train.py", *ARGS, "--dataset_path", str(digits_root),
           "--output_path", str(out), "--run_distribute", "1", "--save_all_ranks", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "msrun_logs").glob("*.log")}
    assert proc.returncode == 0, f"msrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n" + \
        "\n".join(text[-2000:] for text in logs.values())

    # the ranks of one job share its folders: rank 0 owns them for the job (and gives them back at its end)
    assert not (out / RUN_LOCK_NAME).exists() and "in use by another training run" not in "\n".join(logs.values())
    ckpt_dir = out  # the demo config saves into output_path; each rank into rank<R>/ with save_all_ranks
    ranks = [ms.load_checkpoint(str(next((ckpt_dir / f"rank{r}").glob("soft_tiny-2_*.ckpt")))) for r in (0, 1)]
    weights = [name for name in ranks[0] if name not in META_KEYS
               and not name.startswith(("adam_", "learning_rate", "global_step", "train_state"))]
    assert set(ranks[0]) == set(ranks[1]) and any(n.endswith("moving_mean") for n in weights)
    for name in weights:
        np.testing.assert_array_equal(ranks[0][name].asnumpy(), ranks[1][name].asnumpy(), err_msg=name)
    assert np.abs(ranks[0]["patch_embed1.proj.1.moving_mean"].asnumpy()).max() > 1e-3  # statistics moved

    text = "\n".join(logs.values())
    last = re.findall(r"epoch\[1\], .* accuracy=([\d.]+), eval_cost", text)
    images = re.findall(r"top5_accuracy=[\d.]+ \(epoch 1, (\d+) images\)", text)
    assert last and images, text[-3000:]
    single = subprocess.run([sys.executable, "eval.py", *ARGS, "--dataset_path", str(digits_root),
                             "--checkpoint_file_path", str(next((ckpt_dir / "rank0").glob("soft_tiny-2_*.ckpt")))],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    accuracy = re.search(r"^accuracy=([\d.]+),", single.stdout, re.M)
    count = re.search(r"images=(\d+)", single.stdout)
    assert int(count.group(1)) == int(images[0]) > 0
    assert float(accuracy.group(1)) == pytest.approx(float(last[0]), abs=1e-6)
