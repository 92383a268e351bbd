"""eval_onnx.py: onnxruntime over eval.py's evaluation pipeline prints eval.py's numbers.

One random-init SwiftFormer_XS checkpoint (10 classes) is evaluated by eval.py and, exported to ONNX
with a fixed batch of 4 by export.py, by eval_onnx.py and scripts/run_eval_onnx_cpu.sh on 30 images of
32 x 32 (eval batches of 8 and 5: the file's batch splits them and pads the last piece). The three
print the same accuracy, top-5 accuracy and image count. The mistakes (no CUDA provider, wrong image
size, not an ONNX file) end in one ERROR line and exit status 1.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

pytestmark = pytest.mark.cli

CLASSES = 10
PER_CLASS = 3
SIZE = 32


def _run(*args, timeout=600):
    return subprocess.run([*map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def _numbers(text):
    """(top-1, top-5, images) from eval.py's / eval_onnx.py's output lines."""
    top1 = re.search(r"^accuracy=(\d\.\d{6}), per step time: [\d.]+s, total cost time: [\d.]+s$", text, re.M)
    top5 = re.search(r"^top5_accuracy=(\d\.\d{6}), images=(\d+)$", text, re.M)
    assert top1 and top5, text
    return top1.group(1), top5.group(1), int(top5.group(2))


@pytest.fixture(scope="module")
def onnx_job(tmp_path_factory):
    """A checkpoint, its ONNX export (batch 4), a 10-class evaluation folder and an evaluation config."""
    import mindspore as ms
    from PIL import Image

    from models import create_model

    root = tmp_path_factory.mktemp("eval_onnx")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = root / "val" / f"class_{c}"
        folder.mkdir(parents=True)
        for k in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    ms.set_seed(0)
    ckpt = root / "sf.ckpt"
    ms.save_checkpoint(create_model("SwiftFormer_XS", num_classes=CLASSES), str(ckpt))
    config = root / "eval.yml"
    config.write_text(f"backbone: SwiftFormer_XS\nclass_num: {CLASSES}\neval_path: {root / 'val'}\n"
                      f"eval_image_size: {SIZE}\neval_batch_size: 8\neval_num_workers: 1\ndevice_target: CPU\n")
    proc = _run(sys.executable, "export.py", "--config_path", config, "--ckpt_file", ckpt, "--file_format", "ONNX",
                "--batch_size", 4, "--file_name", root / "sf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (root / "sf.onnx").is_file()
    return {"root": root, "ckpt": ckpt, "config": config, "onnx": root / "sf.onnx"}


def test_eval_onnx_prints_eval_py_accuracy(onnx_job):
    by_ckpt = _run(sys.executable, "eval.py", "--config_path", onnx_job["config"], "--ckpt_file", onnx_job["ckpt"])
    assert by_ckpt.returncode == 0, by_ckpt.stdout + by_ckpt.stderr
    by_onnx = _run(sys.executable, "eval_onnx.py", "--config_path", onnx_job["config"], "--onnx_path", onnx_job["onnx"])
    assert by_onnx.returncode == 0, by_onnx.stdout + by_onnx.stderr
    assert "(CPUExecutionProvider), input [4, 3, 32, 32]" in by_onnx.stdout
    expected = _numbers(by_ckpt.stdout)
    assert expected[2] == CLASSES * PER_CLASS
    assert _numbers(by_onnx.stdout) == expected

    # the launch script, with eval batches of 5 (pieces of 4 and a padded 1)
    env = dict(os.environ, PYTHON=sys.executable, LOG_ROOT=str(onnx_job["root"] / "logs"))
    script = subprocess.run(["bash", str(REPO / "scripts" / "run_eval_onnx_cpu.sh"), onnx_job["config"],
                             onnx_job["onnx"], "--eval_batch_size", "5"], cwd=onnx_job["root"], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert script.returncode == 0, script.stdout + script.stderr
    assert _numbers((onnx_job["root"] / "logs" / "eval_onnx_cpu" / "log.txt").read_text()) == expected


def _one_error_line(proc, message):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr


def test_gpu_without_the_cuda_provider_is_one_clear_sentence(onnx_job):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    proc = _run(sys.executable, "eval_onnx.py", "--config_path", onnx_job["config"], "--onnx_path", onnx_job["onnx"],
                "--device_target", "GPU")
    _one_error_line(proc, "--device_target GPU needs onnxruntime's CUDAExecutionProvider, which this onnxruntime")


@pytest.mark.parametrize("case", ["image size", "not onnx"])
def test_mistakes_are_one_error_line(case, onnx_job, tmp_path):
    args = ["--config_path", onnx_job["config"], "--onnx_path", onnx_job["onnx"]]
    if case == "image size":
        args += ["--eval_image_size", 64]
        message = "takes 32 x 32 images but eval_image_size is 64; set --eval_image_size 32"
    else:
        (tmp_path / "bad.onnx").write_bytes(b"not a model")
        args[-1] = tmp_path / "bad.onnx"
        message = f"onnxruntime cannot load {tmp_path / 'bad.onnx'}"
    _one_error_line(_run(sys.executable, "eval_onnx.py", *args), message)
