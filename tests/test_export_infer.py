"""Export (export.py, models/export_utils.py) and inference (infer.py).

* The export surgery keeps the numbers: the Erf-free GELU and the matmul bilinear resize match MindSpore's.
* MINDIR, fixed (SwiftFormer) and dynamic batch (soft_tiny), loaded with nn.GraphCell, gives the network's logits (rel err < 1e-5),
  also for a batch size other than the export one when the batch is dynamic.
* ONNX (soft_tiny, soft_norm_tiny, SwiftFormer_XS) run by onnxruntime agrees within 1e-3 (skipped only
  when onnxruntime is not importable).
* AIR on CPU, and a dynamic batch for ONNX, are refused with one clear sentence.
* infer.py (subprocess) on a MINDIR and on a checkpoint: same top-1, class names from the sidecar / the
  checkpoint, a corrupt image named in an error line while the others are classified, exit 1 only when
  every image failed; its preprocessing is the evaluation pipeline's.

Small networks (depths 1,1,1,1, 4 Newton steps) and 64 x 64 inputs keep this file fast; CPU, graph mode.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

import export as export_cli  # noqa: E402
from helpers import SHALLOW, tree_state  # noqa: E402
from models import create_model  # noqa: E402
from models.softmax_free_vision_transformer import bilinear_matrix  # noqa: E402
from models.export_utils import (ErfFreeGELU, class_names_path, prepare_for_export,  # noqa: E402
                                 read_class_names, write_class_names)

pytestmark = pytest.mark.cli

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")

SIZE = 64
CLASSES = ["apple", "bear", "cloud"]
SMALL = {"depths": SHALLOW}


def _rel(ours, ref):
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def _inputs(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)


def _small_net(name):
    ms.set_seed(0)
    kwargs = dict(SMALL)
    if not name.startswith("SwiftFormer"):
        kwargs["newton_iters"] = 4  # fewer unrolled Newton steps: a smaller graph, the same operators
    net = create_model(name, num_classes=len(CLASSES), portable=True, **kwargs)  # what export.py exports
    net.set_train(False)
    return net


def _run_py(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


# ----------------------------------------------------------------------------------------------- surgery
def test_erf_free_gelu_matches_exact_gelu():
    from scipy.special import erf
    x = np.linspace(-10, 10, 20001, dtype=np.float32)
    ours = ErfFreeGELU()(ms.Tensor(x)).asnumpy().astype(np.float64)
    x64 = x.astype(np.float64)
    exact = 0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))
    assert np.abs(ours - exact).max() < 1e-6
    framework = nn.GELU(approximate=False)(ms.Tensor(x)).asnumpy()
    assert np.abs(ours - framework).max() < 1e-6


def test_bilinear_matrix_matches_interpolate():
    grid = ms.Tensor(np.random.default_rng(1).standard_normal((1, 5, 7, 7)).astype(np.float32))
    for out_h, out_w in ((3, 5), (10, 12), (2, 2)):
        ref = ops.interpolate(grid, size=(out_h, out_w), mode="bilinear", align_corners=False).asnumpy()
        ours = np.einsum("hy,cyx,wx->chw", bilinear_matrix(out_h, 7), grid.asnumpy()[0], bilinear_matrix(out_w, 7))
        assert _rel(ours, ref[0]) < 1e-6


def test_prepare_rejects_unknown_format():
    with pytest.raises(ValueError, match="MINDIR, ONNX, AIR"):
        prepare_for_export(nn.Dense(2, 2), "TFLITE")


def test_class_names_sidecar_round_trip(tmp_path):
    model = tmp_path / "m.ckpt"
    assert read_class_names(str(model)) is None
    write_class_names(str(model), CLASSES)
    assert class_names_path(str(model)) == str(model) + ".classes.json"
    assert read_class_names(str(model)) == CLASSES
    Path(class_names_path(str(model))).write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="list of class names"):
        read_class_names(str(model))


# ----------------------------------------------------------------------------------------------- MINDIR / ONNX
def _case(name, batch, seed):
    net = _small_net(name)
    x = _inputs(batch, seed)
    return net, x, net(ms.Tensor(x)).asnumpy()


@pytest.fixture(scope="module")
def soft_tiny_case():
    """soft_tiny (one block per stage) and its logits for a batch of 3."""
    return _case("soft_tiny", 3, 0)


@pytest.fixture(scope="module")
def swift_case():
    """SwiftFormer_XS (one block per stage) and its logits for a batch of 2."""
    return _case("SwiftFormer_XS", 2, 1)


def test_mindir_fixed_batch(swift_case, tmp_path):
    net, x, ref = swift_case
    path = export_cli.export_network(net, "MINDIR", 2, SIZE, str(tmp_path / "fixed"))
    out = nn.GraphCell(ms.load(path))(ms.Tensor(x)).asnumpy()
    assert out.shape == ref.shape and _rel(out, ref) < 1e-5
    from infer import mindir_input_shape
    assert mindir_input_shape(path) == [2, 3, SIZE, SIZE]


def test_mindir_dynamic_batch(soft_tiny_case, tmp_path):
    net, x, ref = soft_tiny_case
    path = export_cli.export_network(net, "MINDIR", -1, SIZE, str(tmp_path / "dynamic"))
    graph = nn.GraphCell(ms.load(path))
    for batch in (3, 1):
        out = graph(ms.Tensor(x[:batch])).asnumpy()
        assert out.shape == (batch, len(CLASSES))
        assert _rel(out, ref[:batch]) < 1e-5, batch
    from infer import mindir_input_shape
    assert mindir_input_shape(path) == [-1, 3, SIZE, SIZE]


def _onnx_logits(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", ["soft_tiny", "soft_norm_tiny", "SwiftFormer_XS"])
def test_onnx_matches_network(name, request, tmp_path):
    pytest.importorskip("onnxruntime")
    if name == "soft_tiny":
        net, x, ref = request.getfixturevalue("soft_tiny_case")
        x, ref = x[:2], ref[:2]
    elif name == "SwiftFormer_XS":
        net, x, ref = request.getfixturevalue("swift_case")
    else:
        net, x, ref = _case(name, 2, 3)
    path = export_cli.export_network(net, "ONNX", 2, SIZE, str(tmp_path / name))
    out = _onnx_logits(path, x)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-3


def _config(**values):
    from src.model_utils.config import make_config
    base = {"backbone": "SwiftFormer_XS", "class_num": len(CLASSES), "eval_image_size": SIZE}
    base.update(values)
    return make_config(base)


def test_air_on_cpu_and_dynamic_onnx_are_clear_errors(capsys, tmp_path):
    with pytest.raises(export_cli.ExportError, match="AIR export needs an Ascend device"):
        export_cli.check_request(_config(export_format="AIR"))
    with pytest.raises(export_cli.ExportError, match="dynamic batch .* MINDIR export only"):
        export_cli.check_request(_config(export_format="ONNX", export_batch_size=-1))
    with pytest.raises(export_cli.ExportError, match="positive batch size or -1"):
        export_cli.check_request(_config(export_batch_size=0))
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    rc = export_cli.main(["--config_path", "config/SOFT_export.yml", "--export_format", "AIR",
                          "--checkpoint_file_path", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().startswith("ERROR: AIR export needs an Ascend device") and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- CLI round trip
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SwiftFormer_XS checkpoint (3 classes, class names in its metadata), images, an exported MINDIR."""
    root = tmp_path_factory.mktemp("export_cli")
    ms.set_seed(0)
    net = create_model("SwiftFormer_XS", num_classes=len(CLASSES))
    ckpt = root / "sf.ckpt"
    ms.save_checkpoint(net, str(ckpt), append_dict={"class_names": json.dumps(CLASSES), "epoch_num": 2})

    from PIL import Image
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(images / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (90, 60), dtype=np.uint8)).save(images / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).convert("CMYK").save(images / "sub" / "cmyk.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")

    rc = export_cli.main(["--config_path", "config/SOFT_export.yml", "--backbone", "SwiftFormer_XS",
                          "--class_num", str(len(CLASSES)), "--checkpoint_file_path", str(ckpt),
                          "--eval_image_size", str(SIZE), "--export_batch_size", "-1", "--file_name", str(root / "sf_dyn")])
    assert rc == 0
    mindir = root / "sf_dyn.mindir"
    assert mindir.is_file()
    return {"root": root, "ckpt": ckpt, "images": images, "mindir": mindir}


def _predictions(stdout):
    """{image path: [(label, prob), ...]} from infer.py's output."""
    result, current = {}, None
    for line in stdout.splitlines():
        if line.startswith("  ") and current is not None:
            _, rest = line.strip().split(". ", 1)
            label, prob = rest.rsplit("  ", 1)
            result[current].append((label, float(prob)))
        elif not line.startswith("model:") and line.strip():
            current = line.strip()
            result[current] = []
    return result


def test_export_writes_class_names_sidecar(trained):
    assert read_class_names(str(trained["mindir"])) == CLASSES


def test_infer_mindir_and_checkpoint_agree(trained):
    common = ["--config_path", "config/SOFT_export.yml", "--backbone", "SwiftFormer_XS", "--class_num", len(CLASSES),
              "--eval_image_size", SIZE, "--topk", 2]
    images_before = tree_state(trained["images"])
    by_mindir = _run_py("infer.py", *common, "--mindir", trained["mindir"], trained["images"])
    by_ckpt = _run_py("infer.py", *common, "--checkpoint", trained["ckpt"], trained["images"] / "rgb.png",
                      trained["images"] / "sub", trained["images"] / "gray.jpg", trained["images"] / "broken.jpg")
    for proc in (by_mindir, by_ckpt):  # one image cannot be read: exit 1, the others still classified
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"ERROR: cannot read image {trained['images'] / 'broken.jpg'}" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == ("ERROR: 1 of 4 image(s) could not be read (named above); "
                                                        "the other 3 are classified above")
        assert "Traceback" not in proc.stderr
    assert tree_state(trained["images"]) == images_before
    pm, pc = _predictions(by_mindir.stdout), _predictions(by_ckpt.stdout)
    names = {str(trained["images"] / n) for n in ("rgb.png", "gray.jpg", "sub/cmyk.jpg")}
    assert set(pm) == names and set(pc) == names
    for image in names:
        assert len(pm[image]) == 2
        assert pm[image][0][0] == pc[image][0][0]
        assert pm[image][0][0].split(" (")[0] in CLASSES
        assert abs(pm[image][0][1] - pc[image][0][1]) < 1e-5
    assert "class names: " + str(class_names_path(str(trained["mindir"]))) in by_mindir.stdout
    assert "class names: the checkpoint" in by_ckpt.stdout


def test_class_name_sources_in_order(trained, tmp_path, image_folder_factory):
    from infer import resolve_class_names
    model = tmp_path / "named.ckpt"
    model.write_bytes(b"")
    config = _config()
    assert resolve_class_names(config, str(model), {}, 3) == (None, "class indices")
    root = image_folder_factory(per_class=1, classes=["f0", "f1", "f2"], splits=("train",))
    config = _config(dataset_path=str(root))
    assert resolve_class_names(config, str(model), {}, 3)[0] == ["f0", "f1", "f2"]
    assert resolve_class_names(config, str(model), {"class_names": CLASSES}, 3)[0] == CLASSES
    write_class_names(str(model), ["x0", "x1", "x2"])
    assert resolve_class_names(config, str(model), {"class_names": CLASSES}, 3)[0] == ["x0", "x1", "x2"]
    # names that do not fit the model are ignored
    assert resolve_class_names(_config(), str(model), {"class_names": CLASSES}, 4) == (None, "class indices")


def test_infer_with_no_readable_image_says_so(trained, tmp_path):
    bad = _run_py("infer.py", "--config_path", "config/SOFT_export.yml", "--mindir", trained["mindir"],
                  trained["images"] / "broken.jpg", tmp_path / "missing.png")
    assert bad.returncode != 0
    assert "broken.jpg" in bad.stderr and "missing.png" in bad.stderr and "Traceback" not in bad.stderr
    assert "none of the 2 image(s) could be classified" in bad.stderr


def test_infer_preprocessing_is_the_eval_pipeline(image_folder_factory):
    from infer import eval_transform, load_image
    from src.dataset import create_dataset
    root = image_folder_factory(per_class=2, classes=2, splits=("val",), size=(70, 50), fmt="JPEG", mode="L")
    config = _config(dataset_path=str(root), class_num=2, eval_batch_size=8, eval_num_workers=1,
                     eval_interpolation="bicubic", crop_pct=0.875)
    data, _ = create_dataset(config, training=False)
    batch = next(data.create_dict_iterator(output_numpy=True))["image"]
    files = sorted(str(p) for p in (root / "val").rglob("*.jpg"))
    transform = eval_transform(config)
    ours = np.stack([load_image(f, transform) for f in files])
    assert ours.shape == batch.shape == (4, 3, SIZE, SIZE)
    assert np.array_equal(ours, batch)
