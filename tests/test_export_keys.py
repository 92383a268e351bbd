"""export.py speaks the model zoo's and the original port's keys: ckpt_file, file_name, file_format,
batch_size (the exported batch, -1 = dynamic), device_target, device_id; the longer names still work.

* unit: which batch is exported (export_batch_size > batch_size > 1, command line over config file);
* cli: an export config of the original port runs unchanged, and the zoo's command
  ``export.py --config_path C --ckpt_file X --file_name out --file_format MINDIR --batch_size -1``
  writes a dynamic-batch MINDIR whose batch 1 and 3 outputs are the network's.
"""
import re
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

import export as export_cli
from helpers import REPO
from models import create_model
from src.model_utils.config import load_config, make_config

CLASSES = 10

# An export config as the original port wrote it (no key of this repository's own).
ORIGINAL_PORT_EXPORT_CONFIG = """\
enable_modelarts: 0
# Url for modelarts
data_url: ""
train_url: ""
checkpoint_url: ""
output_path: "{output}"

device_target: "CPU"
device_id: 0

backbone: "SwiftFormer_XS"
class_num: {classes}
batch_size: 1
ckpt_file: "{ckpt}"
file_name: "swiftformer_xs"
file_format: "MINDIR"
"""


@pytest.mark.unit
@pytest.mark.parametrize("values,batch", [
    ({}, 1),
    ({"batch_size": 8}, 8),                                  # the zoo's spelling
    ({"batch_size": 8, "export_batch_size": -1}, -1),        # the explicit export key wins
    ({"export_batch_size": 2}, 2),
])
def test_exported_batch_from_config_values(values, batch):
    assert export_cli.exported_batch(make_config(values)) == batch


@pytest.mark.unit
def test_exported_batch_from_the_command_line(tmp_path):
    path = tmp_path / "e.yml"
    path.write_text("batch_size: 1\nexport_batch_size: 4\n")
    argv = export_cli.zoo_command_line(["--config_path", str(path), "--batch_size", "-1", "--ckpt_file", "x.ckpt"])
    assert argv[2:4] == ["--export_batch_size", "-1"]
    config = load_config(argv)
    assert export_cli.exported_batch(config) == -1  # the command line beats both keys of the file
    assert config.checkpoint_file_path == "x.ckpt" and config.ckpt_file == "x.ckpt"
    assert export_cli.exported_batch(load_config(export_cli.zoo_command_line(
        ["--config_path", str(path), "--batch-size=3"]))) == 3
    assert export_cli.exported_batch(load_config(["--config_path", str(path)])) == 4


@pytest.mark.unit
def test_request_errors_name_the_zoo_keys():
    with pytest.raises(export_cli.ExportError, match=r"dynamic batch \(--batch_size -1\) .* MINDIR export only"):
        export_cli.check_request(make_config({"file_format": "ONNX", "batch_size": 1, "export_batch_size": -1}))
    with pytest.raises(export_cli.ExportError, match=r"--file_format MINDIR"):
        export_cli.check_request(make_config({"file_format": "AIR"}))
    assert export_cli.check_request(make_config({"file_format": "onnx", "batch_size": 4, "eval_image_size": 64})) == \
        ("ONNX", 4, 64)


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def original_port_job(tmp_path_factory):
    """A random-init SwiftFormer_XS checkpoint (10 classes) and an export config of the original port."""
    root = tmp_path_factory.mktemp("export_keys")
    ms.set_seed(0)
    net = create_model("SwiftFormer_XS", num_classes=CLASSES)
    ckpt = root / "swiftformer_xs.ckpt"
    ms.save_checkpoint(net, str(ckpt))
    config = root / "swiftformer_xs_export.yml"
    config.write_text(ORIGINAL_PORT_EXPORT_CONFIG.format(output=root / "out", classes=CLASSES, ckpt=ckpt))
    return {"root": root, "ckpt": ckpt, "config": config, "net": net}


def _export(*args):
    proc = subprocess.run([sys.executable, "export.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.cli
def test_original_port_export_config_runs_unchanged(original_port_job):
    out = _export("--config_path", original_port_job["config"])
    path = original_port_job["root"] / "out" / "swiftformer_xs.mindir"
    assert f"to {path}: MINDIR, input float32 [1, 3, 224, 224], output logits [1, {CLASSES}]" in out
    assert path.is_file()


@pytest.mark.cli
def test_zoo_export_command_writes_a_dynamic_batch_mindir(original_port_job):
    job = original_port_job
    out = _export("--config_path", job["config"], "--ckpt_file", job["ckpt"], "--file_name", job["root"] / "out_dyn",
                  "--file_format", "MINDIR", "--batch_size", "-1")
    assert re.search(r"input float32 \[-1, 3, 224, 224\] \(dynamic batch\)", out), out
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = nn.GraphCell(ms.load(str(job["root"] / "out_dyn.mindir")))
    net = job["net"]
    net.set_train(False)
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        images = ms.Tensor(rng.standard_normal((batch, 3, 224, 224)).astype(np.float32))
        ours, reference = graph(images).asnumpy(), net(images)
        reference = (sum(r.asnumpy() for r in reference) / len(reference) if isinstance(reference, (tuple, list))
                     else reference.asnumpy())
        assert ours.shape == (batch, CLASSES)
        assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
