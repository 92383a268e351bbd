"""The CPU speed layer (``models.cpu``) computes what the portable cells compute: values and gradients.

Every rewrite is compared with the portable cell it replaces (the standard operators and autodiff that GPU and
Ascend run), one cell at a time and then per model family (forward, every gradient, the fused inference form).
Kernel rewrites need the libraries of ``make kernels`` and are skipped without them; the rewrites without
kernels are exercised by passing ``accelerate``'s rules a ``Kernels`` with the library left out.
"""
import copy
import logging

import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from helpers import SHALLOW, rel_err
from models import create_model, cpu_layer_enabled, fuse_for_inference, inference_rewrites, is_accelerated
from models import swiftformer as sf
from models.cpu import FlatSquaredNorm, accelerate, layers as cpu_layers, soft as cpu_soft
from models.cpu import swiftformer as cpu_swiftformer
from models.cpu.kernels import Kernels, load as load_kernels
from models.cpu_switch import SWITCH
from models.softmax_free_transformer import GaussianKernel, NewtonInverse, NewtonInverseNorm, SoftAttention
from src.optimizer import SquaredNorm

pytestmark = pytest.mark.unit

KERNELS = load_kernels()
NO_KERNELS = Kernels(None, None, None)
requires_soft = pytest.mark.skipif(KERNELS.soft is None, reason="SOFT CPU kernels not built (make kernels)")
requires_training = pytest.mark.skipif(KERNELS.training is None,
                                       reason="SwiftFormer training kernels not built (make kernels)")
requires_inference = pytest.mark.skipif(KERNELS.inference is None,
                                        reason="SwiftFormer inference kernels not built (make kernels)")


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def _rewritten(cell, kernels):
    """A copy of ``cell`` (same parameter values) rewritten by the rules with ``kernels``."""
    fast = copy.deepcopy(cell)
    for rule in cpu_layers.RULES + cpu_soft.RULES + cpu_swiftformer.RULES:
        replacement = rule(fast, kernels)
        if replacement is not None:
            return replacement
    raise AssertionError(f"no rule rewrites {type(cell).__name__}")


def _value_and_grads(cell, inputs, weights):
    """Σ cell(*inputs) ⊙ weights, its input gradients and its parameter gradients (numpy)."""
    def loss(*args):
        return (cell(*args) * weights).sum()
    positions = tuple(range(len(inputs)))
    params = cell.trainable_params()
    if params:
        value, (dx, dparams) = ms.value_and_grad(loss, grad_position=positions, weights=params)(*inputs)
    else:
        (value, dx), dparams = ms.value_and_grad(loss, grad_position=positions)(*inputs), ()
    dx = dx if isinstance(dx, tuple) else (dx,)
    return float(value.asnumpy()), [d.asnumpy() for d in dx], [g.asnumpy() for g in dparams]


def _assert_same(cell, fast, inputs, rtol=1e-5):
    """``fast`` gives ``cell``'s value, input gradients and parameter gradients."""
    out = cell(*inputs)
    weights = ms.Tensor(np.random.default_rng(7).standard_normal(out.shape).astype(np.float32))
    value, dx, dparams = _value_and_grads(cell, inputs, weights)
    fast_value, fast_dx, fast_dparams = _value_and_grads(fast, inputs, weights)
    assert abs(fast_value - value) <= rtol * abs(value) + 1e-5
    assert len(dparams) == len(fast_dparams)
    assert np.abs(dx[0]).max() > 0, "the comparison is not between zeros"
    for got, want in zip(fast_dx + fast_dparams, dx + dparams):
        if np.abs(want).max() == 0:  # a parameter the tested path does not use
            assert np.abs(got).max() == 0
        else:
            assert rel_err(got, want) < rtol * 10


def _tensor(rng, shape, scale=1.0):
    return ms.Tensor((rng.standard_normal(shape) * scale).astype(np.float32))


# ------------------------------------------------------------------------------------------ MindSpore's layers
@pytest.mark.parametrize("shape", [(7, 12), (2, 9, 12)])
def test_dense_bias_gradient(shape):
    dense = nn.Dense(12, 6, bias_init="normal")
    fast = _rewritten(dense, NO_KERNELS)
    assert isinstance(fast.bias_add, cpu_layers.Float32Kernel)
    assert [p.name for p in fast.get_parameters()] == ["weight", "bias"]
    _assert_same(dense, fast, (_tensor(np.random.default_rng(0), shape),))


@pytest.mark.parametrize("depthwise", [False, True])
def test_conv2d_bias_gradient_and_depthwise_kernel(depthwise):
    if depthwise and KERNELS.training is None:
        pytest.skip("SwiftFormer training kernels not built (make kernels)")
    conv = nn.Conv2d(6, 6, 3, pad_mode="pad", padding=1, group=6 if depthwise else 1, has_bias=True,
                     bias_init="normal")
    fast = _rewritten(conv, KERNELS)
    assert isinstance(fast.conv2d, cpu_layers.Float32Kernel) == depthwise
    _assert_same(conv, fast, (_tensor(np.random.default_rng(1), (3, 6, 10, 8)),))


@pytest.mark.parametrize("kernels", ["cpu-kernel", "operators"])
@pytest.mark.parametrize("shape", [(2, 5, 16), (4, 600, 64)])  # the second: 153,600 elements, two threads
def test_layer_norm_backward(shape, kernels):
    if kernels == "cpu-kernel" and KERNELS.soft is None:
        pytest.skip("SOFT CPU kernels not built (make kernels)")
    norm = nn.LayerNorm((shape[-1],), epsilon=1e-5, gamma_init="normal", beta_init="normal")
    fast = _rewritten(norm, KERNELS if kernels == "cpu-kernel" else NO_KERNELS)
    assert fast.norm_fn.use_kernel == (kernels == "cpu-kernel")
    _assert_same(norm, fast, (_tensor(np.random.default_rng(2), shape, 3.0) + 1.0,), rtol=1e-4)


@pytest.mark.parametrize("kernels", ["cpu-kernel", "formula"])
def test_tanh_gelu_against_the_float64_formula(kernels):
    """MindSpore's CPU tanh is itself off by up to ~2e-4 here (its gradient by up to ~6e-4 of max|dy|), so the
    operator paths are held to 1e-3 and the kernel to 2e-6."""
    if kernels == "cpu-kernel" and KERNELS.soft is None:
        pytest.skip("SOFT CPU kernels not built (make kernels)")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5000)).astype(np.float32) * 3  # several work items, both signs, |x| up to ~12
    x[0, :4] = (0.0, 1e-4, -30.0, 30.0)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    t = np.tanh(0.7978845608028654 * (x64 + 0.044715 * x64 ** 3))
    expected = 0.5 * x64 * (1 + t)
    expected_dx = dy * (0.5 * (1 + t) + 0.5 * x64 * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x64 ** 2))
    portable = nn.GELU(approximate=True)
    fast = _rewritten(portable, KERNELS if kernels == "cpu-kernel" else NO_KERNELS)
    assert isinstance(fast, cpu_layers.TanhGELU) and fast.use_kernel == (kernels == "cpu-kernel")
    for cell, tol in ((fast, 2e-6 if kernels == "cpu-kernel" else 1e-3), (portable, 1e-3)):
        _, (dx,), _ = _value_and_grads(cell, (ms.Tensor(x),), ms.Tensor(dy))
        assert np.abs(cell(ms.Tensor(x)).asnumpy() - expected).max() < tol
        assert np.abs(dx - expected_dx).max() < tol * np.abs(dy).max()


@requires_training
def test_exact_gelu_kernel():
    gelu = nn.GELU(approximate=False)
    fast = _rewritten(gelu, KERNELS)
    assert isinstance(fast, cpu_layers.Float32Kernel)
    _assert_same(gelu, fast, (_tensor(np.random.default_rng(3), (4, 3000), 3.0),))
    assert cpu_layers.gelu(nn.GELU(approximate=False), NO_KERNELS) is None  # no kernel: nn.GELU stays


# ------------------------------------------------------------------------------------------ SOFT
def test_gaussian_kernel_gradient():
    rng = np.random.default_rng(4)
    a, b = _tensor(rng, (2, 3, 40, 8), 0.5), _tensor(rng, (2, 3, 6, 8), 0.5)
    fast = _rewritten(GaussianKernel(), NO_KERNELS)
    assert isinstance(fast, cpu_soft.FastGaussianKernel)
    _assert_same(GaussianKernel(), fast, (a, b))


def _kernel_matrices(shape, seed=0):
    """Gaussian-kernel matrices G(L, L) [..., m, m] of random landmarks, as SOFT inverts."""
    marks = _tensor(np.random.default_rng(seed), shape, 0.4)
    return GaussianKernel()(marks, marks)


@requires_soft
@pytest.mark.parametrize("cls", [NewtonInverse, NewtonInverseNorm])
def test_newton_kernels(cls):
    mat = _kernel_matrices((2, 3, 49, 8))  # m = 49: SOFT's landmark count at 224 x 224
    portable = cls(20)
    fast = _rewritten(portable, KERNELS)
    assert type(fast).__name__.startswith("Kernel") and fast.keep_fp32
    _assert_same(portable, fast, (mat,))


class _LocalTerm(nn.Cell):
    def __init__(self, attn, height, width):
        super().__init__()
        self.attn = attn
        self.height, self.width = height, width

    def construct(self, v):
        return self.attn.local_term(v, self.height, self.width)


@pytest.mark.parametrize("kernels", ["cpu-kernel", "flipped-conv"])
@pytest.mark.parametrize("local_kernel", [3, 5, 9])
def test_soft_attention_local_term(kernels, local_kernel):
    if kernels == "cpu-kernel" and KERNELS.soft is None:
        pytest.skip("SOFT CPU kernels not built (make kernels)")
    attn = SoftAttention(8, 2, ratio=2, local_kernel=local_kernel)
    fast = _rewritten(attn, KERNELS if kernels == "cpu-kernel" else NO_KERNELS)
    expected = cpu_soft.ChannelsLastSoftAttention if kernels == "cpu-kernel" else SoftAttention
    assert type(fast) is expected
    assert [p.name for p in fast.get_parameters()] == [p.name for p in attn.get_parameters()]
    v = _tensor(np.random.default_rng(local_kernel), (2, 6 * 5, 8))
    _assert_same(_LocalTerm(attn, 6, 5), _LocalTerm(fast, 6, 5), (v,))


class _Attention(nn.Cell):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def construct(self, tokens):
        return self.attn(tokens, 8, 8)


@pytest.mark.parametrize("norm_inverse", [False, True], ids=["soft", "soft-norm"])
def test_soft_attention_whole(norm_inverse):
    ms.set_seed(0)
    attn = SoftAttention(16, 2, ratio=2, local_kernel=3, newton_iters=4, norm_inverse=norm_inverse)
    fast = accelerate(copy.deepcopy(attn))
    x = _tensor(np.random.default_rng(1), (2, 64, 16))
    _assert_same(_Attention(attn), _Attention(fast), (x,), rtol=1e-4)


# ------------------------------------------------------------------------------------------ SwiftFormer
@pytest.mark.parametrize("axis", [1, (2, 3)], ids=["channels", "pixels"])
def test_l2_normalize_gradient(axis):
    rng = np.random.default_rng(4)
    values = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    values[0, :, 0, 0] = 0.0  # a zero token (clamped norm) ...
    values[1, 2] = 0.0        # ... and a zero channel map
    portable = sf.L2Normalize(axis)
    fast = _rewritten(portable, NO_KERNELS)
    assert isinstance(fast.fast, cpu_swiftformer.FastL2Normalize)
    _assert_same(portable, fast, (ms.Tensor(values),))


class _Residual(nn.Cell):
    def __init__(self, residual, scale):
        super().__init__()
        self.residual = residual
        self.scale = scale

    def construct(self, x, branch):
        return self.residual(x, self.scale, branch)


@requires_training
def test_scaled_residual_kernel():
    rng = np.random.default_rng(5)
    scale = ms.Parameter(_tensor(rng, (6, 1, 1)), name="scale")
    portable = sf.ScaledResidual()
    fast = _rewritten(portable, KERNELS)
    assert isinstance(fast, cpu_swiftformer.KernelScaledResidual)
    assert cpu_swiftformer.scaled_residual(sf.ScaledResidual(drop_path=0.1), KERNELS) is None  # stochastic depth
    _assert_same(_Residual(portable, scale), _Residual(fast, scale), (_tensor(rng, (2, 6, 5, 4)),
                                                                      _tensor(rng, (2, 6, 5, 4))))


def _randomise(net, seed=0):
    """Random BN statistics, affine parameters, biases and layer scales, so that every rewrite matters."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        name = p.name.rsplit(".", 1)[-1]
        if name in ("moving_variance", "gamma") or name.startswith("layer_scale"):
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
        elif name in ("moving_mean", "beta", "bias"):
            p.set_data(ms.Tensor(rng.normal(0.0, 0.2, p.shape).astype(np.float32)))
    return net


@requires_inference
def test_fused_swiftformer_with_inference_kernels():
    portable = _randomise(sf.SwiftFormer(embed_dims=(16, 24), depths=(2, 2), num_classes=10,
                                         layer_scale_init_value=0.5), seed=2)
    fast = copy.deepcopy(portable)
    fuse_for_inference(portable)
    fuse_for_inference(fast)
    fast = accelerate(fast)
    used = {type(cell).__name__ for _, cell in fast.cells_and_names()}
    assert {"KernelBiasActivation", "KernelLayerScaleResidual", "KernelAdditiveAttentionInference"} <= used
    assert any(isinstance(cell.conv2d, cpu_layers.Float32Kernel) for _, cell in fast.cells_and_names()
               if type(cell) is sf.Conv)
    x = ms.Tensor(np.random.default_rng(8).standard_normal((2, 3, 64, 64)).astype(np.float32))
    assert rel_err(fast(x).asnumpy(), portable(x).asnumpy()) <= 1e-6


# ------------------------------------------------------------------------------------------ train step
def test_flat_squared_norm_and_finiteness():
    rng = np.random.default_rng(1)
    grads = tuple(_tensor(rng, shape) for shape in ((7, 5), (5,), (3, 4, 2, 2)))
    flat, standard = FlatSquaredNorm(), SquaredNorm()
    want = sum(float((g.asnumpy().astype(np.float64) ** 2).sum()) for g in grads)
    assert float(flat(grads).asnumpy()) == pytest.approx(want, rel=1e-5)
    assert float(standard(grads).asnumpy()) == pytest.approx(want, rel=1e-5)
    assert bool(flat.finite(grads).asnumpy()) and bool(standard.finite(grads).asnumpy())
    for bad in (np.inf, -np.inf, np.nan):
        values = grads[-1].asnumpy().copy()
        values.flat[3] = bad
        broken = grads[:-1] + (ms.Tensor(values),)
        assert not bool(flat.finite(broken).asnumpy()) and not bool(standard.finite(broken).asnumpy())


# ------------------------------------------------------------------------------------------ whole networks
FAMILIES = {"soft_tiny": {"depths": SHALLOW, "newton_iters": 3}, "soft_norm_tiny": {"depths": SHALLOW, "newton_iters": 3},
            "SwiftFormer_XS": {"depths": (2, 1, 1, 1), "layer_scale_init_value": 0.5}}


class _Weighted(nn.Cell):
    """<network outputs, weights> (both heads of a distilled SwiftFormer)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, weights):
        out = self.net(x)
        if isinstance(out, tuple):
            out = out[0] + out[1]
        return (out * weights).sum()


def _training_gradients(net, x, weights):
    net.set_train(True)
    loss = _Weighted(net)
    value, grads = ms.value_and_grad(loss, None, net.trainable_params())(x, weights)
    return float(value.asnumpy()), [g.asnumpy() for g in grads]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_accelerated_network_matches_the_portable_one(name):
    """Parameters and names, the training loss and every training gradient, the fused evaluation logits."""
    ms.set_seed(0)
    portable = _randomise(create_model(name, num_classes=10, portable=True, **FAMILIES[name]), seed=3)
    fast = accelerate(copy.deepcopy(portable))
    assert is_accelerated(fast) and not is_accelerated(portable)
    assert [p.name for p in fast.get_parameters()] == [p.name for p in portable.get_parameters()]
    assert {n for n, _ in portable.cells_and_names()} <= {n for n, _ in fast.cells_and_names()}  # paths kept
    rng = np.random.default_rng(4)
    x = _tensor(rng, (2, 3, 64, 64))
    weights = _tensor(rng, (2, 10))
    value, grads = _training_gradients(portable, x, weights)
    fast_value, fast_grads = _training_gradients(fast, x, weights)
    assert fast_value == pytest.approx(value, rel=1e-4, abs=1e-4)
    largest = max(np.abs(g).max() for g in grads)
    for param, got, want in zip(portable.trainable_params(), fast_grads, grads):
        assert np.abs(got - want).max() <= 1e-4 * largest, param.name
    if inference_rewrites(portable):  # the fused form has cells of its own (SOFT's is the network as it is)
        fused_portable = fuse_for_inference(copy.deepcopy(portable))
        fused_fast = fuse_for_inference(accelerate(copy.deepcopy(portable)))
        assert rel_err(fused_fast(x).asnumpy(), fused_portable(x).asnumpy()) <= 1e-5


def test_a_second_pass_changes_nothing():
    net = accelerate(create_model("SwiftFormer_XS", num_classes=3, depths=SHALLOW, portable=True))
    layout = [(name, type(cell).__name__) for name, cell in net.cells_and_names()]
    assert accelerate(net) is net
    assert [(name, type(cell).__name__) for name, cell in net.cells_and_names()] == layout


# ------------------------------------------------------------------------------------------ the switch
def test_switch_values(monkeypatch):
    for value, enabled in (("auto", True), ("", True), ("0", False), ("off", False)):
        monkeypatch.setenv(SWITCH, value)
        assert cpu_layer_enabled() is enabled
    monkeypatch.setenv(SWITCH, "yes please")
    with pytest.raises(ValueError, match="SOFT_CPU_KERNELS must be 'auto' or '0'"):
        cpu_layer_enabled()


def test_create_model_follows_the_switch_and_portable_wins(monkeypatch):
    monkeypatch.setenv(SWITCH, "auto")
    assert is_accelerated(create_model("SwiftFormer_XS", num_classes=3, depths=SHALLOW))
    assert is_accelerated(create_model("soft_tiny", num_classes=3, depths=SHALLOW, features_only=True))
    assert not is_accelerated(create_model("SwiftFormer_XS", num_classes=3, depths=SHALLOW, portable=True))
    monkeypatch.setenv(SWITCH, "0")
    net = create_model("soft_tiny", num_classes=3, depths=SHALLOW)
    assert not is_accelerated(net)
    assert not any(type(cell).__module__.startswith("models.cpu") for _, cell in net.cells_and_names())


def test_a_library_not_built_is_left_out_with_one_warning(monkeypatch, tmp_path, caplog):
    from models.cpu import kernels as kernel_loader
    monkeypatch.setattr(kernel_loader, "_STATE", {})
    monkeypatch.setattr(kernel_loader, "library_path", lambda source: str(tmp_path / f"{source}.not_built.so"))
    with caplog.at_level(logging.WARNING, logger="models"):
        nets = [accelerate(create_model("soft_tiny", num_classes=3, depths=SHALLOW, portable=True)) for _ in range(2)]
    assert all(is_accelerated(net) for net in nets)
    kinds = {type(cell).__name__ for _, cell in nets[0].cells_and_names()}
    assert "FastGaussianKernel" in kinds and "KernelNewtonInverse" not in kinds  # no kernel, the rest stays
    warnings = [r for r in caplog.records if r.name == "models" and "not built" in r.getMessage()]
    assert len(warnings) == 3  # once per library, not once per network


def test_export_refuses_an_accelerated_network():
    from models.export_utils import prepare_for_export
    with pytest.raises(ValueError, match="portable=True"):
        prepare_for_export(accelerate(create_model("soft_tiny", num_classes=3, depths=SHALLOW, portable=True)))
