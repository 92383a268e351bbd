"""SwiftFormer: parity with the PyTorch reference (through the converter CLI), the paper's formulas, the
inference pass (fused == unfused, exportable, idempotent), no compiler started by a model, sizes, training in
graph mode, bad input. (The CPU speed layer's cells are compared with these in test_cpu_layer.py.)

CPU, graph mode. Fixture-based tests skip with helpers' reason when ../shared is absent.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from helpers import FIXTURES, REPO, SHALLOW, rel_err, requires_fixtures, run_cli
from models import create_model, fuse_for_inference, is_fused, list_models
from models import swiftformer as sf
from models.export_utils import prepare_for_export

pytestmark = pytest.mark.unit

FIXTURE = FIXTURES / "SwiftFormer_XS.npz"
PARAMS = {"SwiftFormer_XS": 3_475_360, "SwiftFormer_S": 6_092_128, "SwiftFormer_L1": 12_057_920,
          "SwiftFormer_L3": 28_494_736}


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield


def _eval(net, x):
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def _randomise(net, seed=0):
    """Random BN statistics, affine parameters, biases and layer scales, so that every fold matters."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if re.search(r"(moving_variance|gamma|layer_scale\w*)$", p.name):
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
        elif re.search(r"(moving_mean|beta|bias)$", p.name):
            p.set_data(ms.Tensor(rng.normal(0.0, 0.2, p.shape).astype(np.float32)))
    return net


def _copy(net, factory):
    """A second network from ``factory()`` with ``net``'s parameters (a fresh cell: nothing compiled yet)."""
    other = factory()
    ms.load_param_into_net(other, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in net.get_parameters()})
    return other


def _plain_and_fused(factory, seed=0):
    plain = _randomise(factory(), seed)
    plain.set_train(False)
    return plain, fuse_for_inference(_copy(plain, factory))


def _small(**kwargs):
    """A two-stage SwiftFormer with every block type (ConvEncoder, SwiftFormerEncoder, Embedding): fast to compile."""
    return sf.SwiftFormer(embed_dims=(16, 24), depths=(2, 2), num_classes=10, **kwargs)


# ----------------------------------------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """Converted checkpoints: 'full' (with dist_head) and 'single' (dist_head.* dropped), with the CLI logs."""
    tmp = tmp_path_factory.mktemp("swiftformer")
    weights = {k: v for k, v in reference.items() if not k.startswith(("input", "logits"))}
    out = {}
    for name, state in (("full", weights), ("single", {k: v for k, v in weights.items()
                                                       if not k.startswith("dist_head.")})):
        np.savez(tmp / f"{name}.npz", **state)
        proc = run_cli("tools/convert_torch_checkpoint.py", "--arch", "SwiftFormer_XS", "--src", tmp / f"{name}.npz",
                       "--dst", tmp / f"{name}.ckpt", timeout=300)
        out[name + "_log"] = proc.stdout
        out[name] = str(tmp / f"{name}.ckpt")
    return out


@pytest.mark.both_paths
@requires_fixtures
@pytest.mark.parity
@pytest.mark.parametrize("path", ["plain", "fused"])
def test_parity_with_reference_through_converter(reference, converted, path):
    net = create_model("SwiftFormer_XS", pretrained=converted["full"])
    if path == "fused":
        fuse_for_inference(net)
    pairs = [("input_160", "logits_160")] if path == "plain" else [("input", "logits"), ("input_160", "logits_160")]
    for inp, ref in pairs:
        err = rel_err(_eval(net, reference[inp]), reference[ref])
        assert err <= 1e-5, f"{path} {inp}: max|ours-ref|/max|ref| = {err:.3g}"


@requires_fixtures
@pytest.mark.parity
def test_parameter_names_are_the_reference_keys():
    keys = [line.split()[0] for line in (FIXTURES / "SwiftFormer_XS_keys.txt").read_text().splitlines() if line.strip()]
    names = sf.torch_param_names(create_model("SwiftFormer_XS"))
    assert sorted(names.values()) == sorted(k for k in keys if not k.endswith("num_batches_tracked"))


class _HeadOnly(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net.head(self.net.forward_features(x))


@requires_fixtures
@pytest.mark.parity
def test_checkpoint_without_dist_head_gives_single_head(reference, converted):
    assert "distillation" in converted["single_log"]
    single = create_model("SwiftFormer_XS", distillation=False, pretrained=converted["single"])
    assert not hasattr(single, "dist_head")
    full = create_model("SwiftFormer_XS", pretrained=converted["full"])
    x = reference["input"][:, :, :64, :64].copy()
    head_only = _HeadOnly(full)
    head_only.set_train(False)
    ours = _eval(single, x)
    assert ours.shape == (2, 1000)
    np.testing.assert_allclose(ours, head_only(ms.Tensor(x)).asnumpy(), rtol=0, atol=1e-5 * np.abs(ours).max())


# ----------------------------------------------------------------------------------------------- structure
def test_registered():
    assert set(PARAMS) <= set(list_models("SwiftFormer*"))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    net = create_model(name)
    assert sum(p.size for p in net.trainable_params()) == PARAMS[name]


def test_no_weight_decay_is_empty_as_in_the_reference():
    assert create_model("SwiftFormer_XS", num_classes=10).no_weight_decay() == set()


def test_variant_overrides_from_torch():
    keys = [f"network.{2 * i}.{j}.layer_scale" for i, depth in enumerate((3, 3, 8, 4)) for j in range(depth)]
    state = {k: np.zeros(1) for k in keys}
    state["head.weight"] = np.zeros((10, 220), np.float32)
    got = sf.variant_overrides_from_torch(state, "SwiftFormer_XS")
    assert got == {"num_classes": 10, "distillation": False, "depths": (3, 3, 8, 4)}
    state["dist_head.weight"] = state["head.weight"]
    keys_only = sf.variant_overrides_from_torch(list(state), "SwiftFormer_XS")
    assert keys_only == {"depths": (3, 3, 8, 4)}


def test_no_python_file_holds_cpp_source():
    marker = 'extern "C' + '"'  # spelled in two parts, so that this file does not match itself
    offenders = [str(p.relative_to(REPO)) for p in REPO.rglob("*.py")
                 if ".venv" not in p.parts and marker in p.read_text(encoding="utf-8", errors="ignore")]
    assert not offenders, offenders


def test_eval_output_does_not_depend_on_batch_mates():
    net = _small()
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    together = _eval(net, x)
    alone = _eval(net, x[1:2].copy())
    assert rel_err(together[1:2], alone) <= 1e-5


class _LogitsAndStages(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net(x), self.net.forward_features(x), self.net.forward_stages(x)


def test_non_square_input_features_and_stage_maps():
    net = _LogitsAndStages(create_model("SwiftFormer_XS", num_classes=10))
    net.set_train(False)
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 96)).astype(np.float32)
    logits, features, stages = net(ms.Tensor(x))
    assert logits.shape == (1, 10) and features.shape == (1, 220)
    assert [tuple(s.shape) for s in stages] == [(1, 48, 16, 24), (1, 56, 8, 12), (1, 112, 4, 6), (1, 220, 2, 3)]


@pytest.mark.parametrize("fused", [False, True])
def test_size_not_multiple_of_32_is_a_clear_error(fused):
    net = create_model("SwiftFormer_XS", num_classes=10)
    if fused:
        fuse_for_inference(net)
    net.set_train(False)
    with pytest.raises(ValueError, match="multiple.* of 32"):
        net(ms.Tensor(np.zeros((1, 3, 100, 100), np.float32)))


# ----------------------------------------------------------------------------------------------- attention
def _attention_reference(tokens, p):
    """The reference formula on tokens [B, N, C] in float64; returns (a [B, N], out [B, N, C])."""
    t = tokens.astype(np.float64)
    l2n = lambda v, axis: v / np.maximum(np.linalg.norm(v, axis=axis, keepdims=True), 1e-12)  # noqa: E731
    q = l2n(t @ p["to_query.weight"].T + p["to_query.bias"], -1)
    k = l2n(t @ p["to_key.weight"].T + p["to_key.bias"], -1)
    a = l2n(q @ p["w_g"] * q.shape[-1] ** -0.5, 1)  # [B, N, 1], normalised over the tokens
    g = (a * q).sum(axis=1, keepdims=True)
    out = (g * k) @ p["Proj.weight"].T + p["Proj.bias"] + q
    return a[..., 0], out @ p["final.weight"].T + p["final.bias"]


class _TokenWeights(nn.Cell):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def construct(self, x):
        return self.attn.token_weights(x)


class _BiasAdded(nn.Cell):
    """The inference attention with its bias added back: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn
        self.bias = ms.Tensor(attn.bias.astype(np.float32))

    def construct(self, x):
        return ops.bias_add(self.attn(x), self.bias)


def test_attention_matches_formula_and_weights_vary_over_tokens():
    attn = sf.EfficientAdditiveAttention(16)
    rng = np.random.default_rng(1)
    for _, param in attn.parameters_and_names():
        param.set_data(ms.Tensor(rng.standard_normal(param.shape).astype(np.float32) * 0.3))
    params = {name: param.asnumpy().astype(np.float64) for name, param in attn.parameters_and_names()}
    x = rng.standard_normal((2, 16, 8, 4)).astype(np.float32)  # [B, C, H, W]
    tokens = x.reshape(2, 16, 32).transpose(0, 2, 1).copy()    # [B, N, C], the reference's layout
    a_ref, out_ref = _attention_reference(tokens, params)
    a = _TokenWeights(attn)(ms.Tensor(x)).asnumpy()
    out = attn(ms.Tensor(x)).asnumpy().reshape(2, 16, 32).transpose(0, 2, 1)  # back to [B, N, C]
    assert a.shape == (2, 32)
    np.testing.assert_allclose((a * a).sum(axis=1), 1.0, rtol=1e-5)
    assert (a.max(axis=1) - a.min(axis=1) > 0.05).all(), "attention weights are constant across tokens"
    assert np.abs(a - a_ref).max() <= 1e-5
    assert rel_err(out, out_ref) <= 1e-5
    # the inference form: channels-first, re-associated
    inference = sf.AdditiveAttentionInference(attn)
    channels_first = _BiasAdded(inference)(ms.Tensor(x)).asnumpy()
    assert rel_err(channels_first, out_ref.transpose(0, 2, 1).reshape(x.shape)) <= 1e-5


# ----------------------------------------------------------------------------------------------- inference pass
def test_fused_equals_unfused_small_and_fusing_twice_is_a_no_op():
    plain, fused = _plain_and_fused(lambda: _small(layer_scale_init_value=0.5), seed=1)
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 96)).astype(np.float32)
    want = _eval(plain, x)
    got = _eval(fused, x)
    assert is_fused(fused) and not any(isinstance(c, nn.BatchNorm2d) for _, c in fused.cells_and_names())
    assert rel_err(got, want) <= 1e-6
    layout = [(name, type(cell).__name__) for name, cell in fused.cells_and_names()]
    for _, cell in fused.cells_and_names():  # every hook once more, directly: nothing changes
        if hasattr(cell, "reparameterize"):
            cell.reparameterize()
    assert fuse_for_inference(fused) is fused
    assert [(name, type(cell).__name__) for name, cell in fused.cells_and_names()] == layout
    again = _copy(plain, lambda: _small(layer_scale_init_value=0.5))
    fuse_for_inference(again)
    fuse_for_inference(again)
    assert rel_err(_eval(again, x), want) <= 1e-6


@pytest.mark.parametrize("name, shape", [pytest.param("SwiftFormer_XS", (1, 3, 224, 224), marks=pytest.mark.slow),
                                         ("SwiftFormer_XS", (1, 3, 160, 224)),
                                         pytest.param("SwiftFormer_S", (1, 3, 64, 64), marks=pytest.mark.slow),
                                         pytest.param("SwiftFormer_L1", (1, 3, 64, 96), marks=pytest.mark.slow)])
def test_fused_equals_unfused(name, shape):
    plain, fused = _plain_and_fused(lambda: create_model(name, num_classes=100))
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    err = rel_err(_eval(fused, x), _eval(plain, x))
    assert err <= 1e-6, f"{name} {shape}: fused vs unfused {err:.3g}"


@pytest.mark.slow
def test_fused_network_exports_without_custom_operators(tmp_path):
    plain, fused = _plain_and_fused(lambda: create_model("SwiftFormer_XS", num_classes=3, depths=SHALLOW, portable=True))
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = _eval(plain, x)
    prepare_for_export(fused, "MINDIR")
    for batch in (2, -1):
        dummy = ms.Tensor(shape=[None, 3, 64, 64], dtype=ms.float32) if batch < 0 else ms.Tensor(x)
        ms.export(fused, dummy, file_name=str(tmp_path / f"sf{batch}"), file_format="MINDIR")
        graph = nn.GraphCell(ms.load(str(tmp_path / f"sf{batch}.mindir")))
        assert rel_err(graph(ms.Tensor(x)).asnumpy(), want) <= 1e-5
    assert rel_err(graph(ms.Tensor(x[:1])).asnumpy(), want[:1]) <= 1e-5  # dynamic batch: another batch size
    ort = pytest.importorskip("onnxruntime")
    prepare_for_export(fused, "ONNX")
    ms.export(fused, ms.Tensor(x), file_name=str(tmp_path / "sf"), file_format="ONNX")
    session = ort.InferenceSession(str(tmp_path / "sf.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert rel_err(got, want) <= 1e-3


_NO_COMPILER_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, mindspore as ms
ms.set_context(mode=ms.GRAPH_MODE)
from models import create_model, fuse_for_inference
x = ms.Tensor(np.zeros((1, 3, 64, 64), np.float32))
for fuse in (False, True):
    net = create_model("SwiftFormer_XS", num_classes=3)
    net.set_train(False)
    if fuse:
        fuse_for_inference(net)
    assert net(x).shape == (1, 3)
print("ran")
"""


@pytest.mark.slow
def test_creating_and_running_a_model_starts_no_compiler(tmp_path):
    """PATH holds only stand-ins for every compiler name; each records that it was started."""
    record = tmp_path / "started.txt"
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("g++", "c++", "gcc", "cc", "clang", "clang++", "ld"):
        tool = tools / name
        tool.write_text(f"#!/bin/sh\necho {name} >> {record}\nexit 1\n")
        tool.chmod(0o755)
    script = tmp_path / "child.py"
    script.write_text(_NO_COMPILER_CHILD)
    env = dict(os.environ, PATH=str(tools), CXX="g++")
    proc = subprocess.run([sys.executable, str(script), str(REPO)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "ran" in proc.stdout, proc.stderr[-2000:]
    assert not record.exists(), f"a compiler was started: {record.read_text()}"


# ----------------------------------------------------------------------------------------------- training
class _DistillLoss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def construct(self, x, y):
        logits, dist = self.net(x)
        return (self.ce(logits, y) + self.ce(dist, y)) / 2


def test_training_step_updates_every_parameter_and_bn_statistics():
    net = create_model("SwiftFormer_XS", num_classes=10, depths=(2, 1, 1, 1))  # every block type, fewer blocks
    step = nn.TrainOneStepCell(_DistillLoss(net), nn.Adam(net.trainable_params(), learning_rate=1e-3))
    step.set_train(True)
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    rng = np.random.default_rng(2)
    x = ms.Tensor(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
    y = ms.Tensor(np.array([1, 7], np.int32))
    loss = float(step(x, y).asnumpy())
    assert np.isfinite(loss)
    unchanged = [p.name for p in net.get_parameters() if np.array_equal(p.asnumpy(), before[p.name])]
    assert not unchanged, f"not updated by a training step: {unchanged}"
    statistics = [p.name for p in net.get_parameters() if "moving_" in p.name]
    assert len(statistics) == 2 * sum(isinstance(c, nn.BatchNorm2d) for _, c in net.cells_and_names()) > 0
    net.set_train(True)
    out = net(x)
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == (2, 10)


class _Grads(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.weights = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, x, sens):
        return self.grad(self.net, self.weights)(x, sens)


@pytest.mark.both_paths
def test_training_gradients_reach_every_parameter():
    net = _small(distillation=False, layer_scale_init_value=0.5)
    net.set_train(True)
    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
    sens = ms.Tensor(rng.standard_normal((2, 10)).astype(np.float32))
    grads = [g.asnumpy() for g in _Grads(net)(x, sens)]
    names = [p.name for p in net.trainable_params()]
    largest = max(np.abs(g).max() for g in grads)
    # a per-channel constant that only ever reaches training-mode BatchNorms has a zero gradient (float32
    # noise): the bias of a convolution followed by BN, and the biases the last block adds to the residual
    # stream after its attention reads it (the MLP's BN and then the head's BN follow)
    before_bn = re.compile(r"(patch_embed\.[03]|network\.\d+\.proj|dwconv"
                           r"|network\.2\.1\.(attn\.Proj|attn\.final|linear\.fc2))\.bias$")
    for name, grad in zip(names, grads):
        assert np.isfinite(grad).all(), name
        if before_bn.search(name):
            assert np.abs(grad).max() <= 1e-5 * largest, name
        else:
            assert np.abs(grad).max() > 1e-7 * largest, f"{name}: no gradient"
