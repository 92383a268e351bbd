"""SwiftFormer: parity with the PyTorch reference (through the converter CLI), sizes, training, bad input.

CPU, graph mode. The reference fixtures live in ../../shared/fixtures/torch_reference (override with the
SOFT_FIXTURES environment variable); the tests that need them are skipped when they are absent.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from models import create_model, list_models  # noqa: E402
from models import swiftformer as sf  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)

FIXTURES = Path(os.environ.get("SOFT_FIXTURES",
                              Path(__file__).resolve().parents[2] / "shared/fixtures/torch_reference"))
FIXTURE = FIXTURES / "SwiftFormer_XS.npz"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_file(), reason=f"reference fixture {FIXTURE} not found")

PARAMS = {"SwiftFormer_XS": 3_475_360, "SwiftFormer_S": 6_092_128, "SwiftFormer_L1": 12_057_920,
          "SwiftFormer_L3": 28_494_736}


def _rel(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _eval(net, x):
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def _convert(src, dst, arch="SwiftFormer_XS"):
    """Run the converter CLI; returns its stdout."""
    proc = subprocess.run([sys.executable, "tools/convert_torch_checkpoint.py", "--arch", arch, "--src", str(src),
                           "--dst", str(dst)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """Converted checkpoints: 'full' (with dist_head) and 'single' (dist_head.* dropped)."""
    tmp = tmp_path_factory.mktemp("swiftformer")
    weights = {k: v for k, v in reference.items() if not k.startswith(("input", "logits"))}
    out = {}
    for name, state in (("full", weights), ("single", {k: v for k, v in weights.items()
                                                       if not k.startswith("dist_head.")})):
        np.savez(tmp / f"{name}.npz", **state)
        out[name + "_log"] = _convert(tmp / f"{name}.npz", tmp / f"{name}.ckpt")
        out[name] = str(tmp / f"{name}.ckpt")
    return out


def test_registered():
    assert set(PARAMS) <= set(list_models("SwiftFormer*"))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    net = create_model(name)
    assert sum(p.size for p in net.trainable_params()) == PARAMS[name]


def test_parameter_names_are_the_reference_keys():
    keys = [line.split()[0] for line in (FIXTURES / "SwiftFormer_XS_keys.txt").read_text().splitlines()
            if line.strip()] if (FIXTURES / "SwiftFormer_XS_keys.txt").is_file() else None
    if keys is None:
        pytest.skip("reference key list not found")
    names = sf.torch_param_names(create_model("SwiftFormer_XS"))
    assert sorted(names.values()) == sorted(k for k in keys if not k.endswith("num_batches_tracked"))


def test_variant_overrides_from_torch():
    keys = [f"network.{2 * i}.{j}.layer_scale" for i, depth in enumerate((3, 3, 8, 4)) for j in range(depth)]
    state = {k: np.zeros(1) for k in keys}
    state["head.weight"] = np.zeros((10, 220), np.float32)
    got = sf.variant_overrides_from_torch(state, "SwiftFormer_XS")
    assert got == {"num_classes": 10, "distillation": False, "depths": (3, 3, 8, 4)}
    state["dist_head.weight"] = state["head.weight"]
    keys_only = sf.variant_overrides_from_torch(list(state), "SwiftFormer_XS")
    assert keys_only == {"depths": (3, 3, 8, 4)}


@needs_fixture
@pytest.mark.parametrize("fused", [None, False])
def test_parity_with_reference_through_converter(reference, converted, fused):
    net = create_model("SwiftFormer_XS", pretrained=converted["full"], fused_kernels=fused)
    pairs = [("input", "logits"), ("input_160", "logits_160")] if fused is None else [("input_160", "logits_160")]
    for inp, ref in pairs:
        err = _rel(_eval(net, reference[inp]), reference[ref])
        assert err <= 1e-5, f"{inp}: max|ours-ref|/max|ref| = {err:.3g}"


class _HeadOnly(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net.head(self.net.forward_features(x))


@needs_fixture
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


def _small(**kwargs):
    """A two-stage SwiftFormer with every block type (ConvEncoder, SwiftFormerEncoder, Embedding): fast to compile."""
    return sf.SwiftFormer(embed_dims=(16, 24), depths=(2, 2), num_classes=10, **kwargs)


def test_eval_output_does_not_depend_on_batch_mates():
    net = _small()
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    together = _eval(net, x)
    alone = _eval(net, x[1:2].copy())
    assert _rel(together[1:2], alone) <= 1e-5


def _attention_reference(x, p):
    """The reference formula on tokens [B, N, C] in float64; returns (a [B, N], out [B, C, H, W])."""
    b, c, h, w = x.shape
    t = x.reshape(b, c, h * w).transpose(0, 2, 1).astype(np.float64)
    l2n = lambda v, axis: v / np.maximum(np.linalg.norm(v, axis=axis, keepdims=True), 1e-12)  # noqa: E731
    q = l2n(t @ p["to_query.weight"].T + p["to_query.bias"], -1)
    k = l2n(t @ p["to_key.weight"].T + p["to_key.bias"], -1)
    a = l2n(q @ p["w_g"] * c ** -0.5, 1)  # [B, N, 1], normalised over the tokens
    g = (a * q).sum(axis=1, keepdims=True)
    out = (g * k) @ p["Proj.weight"].T + p["Proj.bias"] + q
    out = out @ p["final.weight"].T + p["final.bias"]
    return a[..., 0], out.transpose(0, 2, 1).reshape(b, c, h, w)


class _TokenWeights(nn.Cell):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def construct(self, x):
        return self.attn.token_weights(x)


def test_attention_matches_formula_and_weights_vary_over_tokens():
    attn = sf.EfficientAdditiveAttention(16)
    rng = np.random.default_rng(1)
    for _, param in attn.parameters_and_names():
        param.set_data(ms.Tensor(rng.standard_normal(param.shape).astype(np.float32) * 0.3))
    params = {name: param.asnumpy().astype(np.float64) for name, param in attn.parameters_and_names()}
    x = rng.standard_normal((2, 16, 8, 4)).astype(np.float32)
    a_ref, out_ref = _attention_reference(x, params)
    a = _TokenWeights(attn)(ms.Tensor(x)).asnumpy()
    out = attn(ms.Tensor(x)).asnumpy()
    assert a.shape == (2, 32)
    np.testing.assert_allclose((a * a).sum(axis=1), 1.0, rtol=1e-5)
    assert (a.max(axis=1) - a.min(axis=1) > 0.05).all(), "attention weights are constant across tokens"
    assert np.abs(a - a_ref).max() <= 1e-5
    assert _rel(out, out_ref) <= 1e-5


class _DistillLoss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def construct(self, x, y):
        logits, dist = self.net(x)
        return (self.ce(logits, y) + self.ce(dist, y)) / 2


def test_training_step_updates_every_parameter():
    net = create_model("SwiftFormer_XS", num_classes=10)
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


@pytest.mark.skipif(not sf.fused_kernels_available(), reason="fused CPU kernels unavailable (no C++ compiler)")
def test_fused_kernels_match_standard_ops_in_training():
    fused = _small(fused_kernels=True, distillation=False, layer_scale_init_value=0.5)
    plain = _small(fused_kernels=False, distillation=False, layer_scale_init_value=0.5)
    ms.load_param_into_net(plain, {p.name: ms.Parameter(ms.Tensor(p.asnumpy()), name=p.name)
                                   for p in fused.get_parameters()})
    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
    sens = ms.Tensor(rng.standard_normal((2, 10)).astype(np.float32))
    results = []
    for net in (fused, plain):
        net.set_train(True)
        results.append([g.asnumpy() for g in _Grads(net)(x, sens)])
    names = [p.name for p in fused.trainable_params()]
    largest = max(np.abs(g).max() for g in results[1])
    # the bias of a convolution followed by a training-mode BatchNorm has a zero gradient (float32 noise)
    before_bn = re.compile(r"(patch_embed\.[03]|network\.\d+\.proj|dwconv)\.bias$")
    for name, g_fused, g_plain in zip(names, *results):
        if before_bn.search(name):
            assert np.abs(g_fused).max() <= 1e-5 * largest, name
        else:
            err = np.abs(g_fused - g_plain).max() / max(np.abs(g_plain).max(), 1e-3 * largest)
            assert err <= 1e-4, f"{name}: {err:.3g}"


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


def test_size_not_multiple_of_32_is_a_clear_error():
    net = create_model("SwiftFormer_XS", num_classes=10)
    net.set_train(False)
    with pytest.raises(ValueError, match="multiple.* of 32"):
        net(ms.Tensor(np.zeros((1, 3, 100, 100), np.float32)))
