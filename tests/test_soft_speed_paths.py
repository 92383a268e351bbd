"""The SOFT CPU kernels (models/kernels/soft_cpu.cc) give the values and gradients of the standard operators.

Each fast cell is compared with the same cell switched to MindSpore's operators (``use_cpu_kernels`` False,
what export does). The kernel tests need the library (``make kernels``) and are skipped without it.
"""
import numpy as np
import pytest

import mindspore as ms

from helpers import rel_err
from models import create_model
from models.export_utils import prepare_for_export
from models.kernels import soft as soft_kernels
from models.layers import HeadwiseConv, TanhGELU
from models.softmax_free_transformer import NewtonInverse, NewtonInverseNorm, SoftAttention, gaussian_kernel

pytestmark = pytest.mark.unit

requires_kernels = pytest.mark.skipif(soft_kernels.load() is None,
                                      reason="SOFT CPU kernels not built (make kernels) or switched off")


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def _kernel_matrices(shape, seed=0):
    """Gaussian-kernel matrices G(L, L) [..., m, m] of random landmarks, as SOFT inverts."""
    marks = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.4
    marks = ms.Tensor(marks)
    return gaussian_kernel(marks, marks)


def _plain(cell):
    """``cell`` with every kernel switched off (in place); returns it."""
    for _, sub in cell.cells_and_names():
        if hasattr(sub, "use_cpu_kernels"):
            sub.use_cpu_kernels = False
    return cell


def _value_and_grads(cell, inputs, weights):
    """Σ cell(*inputs) ⊙ weights, its input gradients and its parameter gradients (numpy)."""
    def loss(*args):
        return (cell(*args) * weights).sum()
    grad_fn = ms.value_and_grad(loss, grad_position=0, weights=cell.trainable_params())
    value, (dx, dparams) = grad_fn(*inputs)
    return value.asnumpy(), dx.asnumpy(), [g.asnumpy() for g in dparams]


@requires_kernels
@pytest.mark.parametrize("cls", [NewtonInverse, NewtonInverseNorm])
def test_newton_kernel_matches_the_standard_operators(cls):
    mat = _kernel_matrices((2, 3, 49, 8))  # m = 49: SOFT's landmark count at 224 x 224
    fast = cls(20)
    assert fast.use_cpu_kernels
    plain = _plain(cls(20))
    assert rel_err(fast(mat).asnumpy(), plain(mat).asnumpy()) < 1e-5


@requires_kernels
@pytest.mark.parametrize("kernel", [3, 5, 9])
def test_local_conv_kernel_matches_the_standard_operators_forward_and_backward(kernel):
    rng = np.random.default_rng(kernel)
    heads, height, width = 2, 6, 5
    tokens = ms.Tensor(rng.standard_normal((2, height * width, heads * 4)).astype(np.float32))
    weights = ms.Tensor(rng.standard_normal((2, height * width, heads * 4)).astype(np.float32))
    fast = HeadwiseConv(heads, kernel)
    plain = _plain(HeadwiseConv(heads, kernel))
    plain.weight.set_data(fast.weight.data)
    assert fast.use_cpu_kernels

    class OnTokens(ms.nn.Cell):
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def construct(self, x):
            return self.conv.on_tokens(x, height, width)

    value, dx, (dw,) = _value_and_grads(OnTokens(fast), (tokens,), weights)
    ref_value, ref_dx, (ref_dw,) = _value_and_grads(OnTokens(plain), (tokens,), weights)
    assert abs(value - ref_value) <= 1e-5 * abs(ref_value) + 1e-5
    assert rel_err(dx, ref_dx) < 1e-5
    assert rel_err(dw, ref_dw) < 1e-5


@requires_kernels
def test_tanh_gelu_kernel_matches_the_formula_forward_and_backward():
    """Against the float64 formula. MindSpore's CPU tanh is itself off by up to ~2e-4 here (its gradient by
    up to ~6e-4 of max|dy|), so the operator path is held to 1e-3."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5000)).astype(np.float32) * 3  # several work items, both signs, |x| up to ~12
    x[0, :4] = (0.0, 1e-4, -30.0, 30.0)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    t = np.tanh(0.7978845608028654 * (x64 + 0.044715 * x64 ** 3))
    expected = 0.5 * x64 * (1 + t)
    expected_dx = dy * (0.5 * (1 + t) + 0.5 * x64 * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x64 ** 2))
    fast, plain = TanhGELU(), _plain(TanhGELU())
    assert fast.use_cpu_kernels and not plain.use_cpu_kernels
    for cell, tol in ((fast, 2e-6), (plain, 1e-3)):
        _, dx, _ = _value_and_grads(cell, (ms.Tensor(x),), ms.Tensor(dy))
        assert np.abs(cell(ms.Tensor(x)).asnumpy() - expected).max() < tol
        assert np.abs(dx - expected_dx).max() < tol * np.abs(dy).max()


@requires_kernels
def test_soft_norm_attention_with_kernels_matches_the_standard_operators():
    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.standard_normal((2, 64, 16)).astype(np.float32))
    weights = ms.Tensor(rng.standard_normal((2, 64, 16)).astype(np.float32))
    ms.set_seed(0)
    fast = SoftAttention(16, 2, ratio=2, local_kernel=3, newton_iters=4, norm_inverse=True)
    plain = _plain(SoftAttention(16, 2, ratio=2, local_kernel=3, newton_iters=4, norm_inverse=True))
    for ours, theirs in zip(plain.get_parameters(), fast.get_parameters()):
        ours.set_data(theirs.data)

    class Attn(ms.nn.Cell):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def construct(self, tokens):
            return self.attn(tokens, 8, 8)

    value, dx, dparams = _value_and_grads(Attn(fast), (x,), weights)
    ref_value, ref_dx, ref_dparams = _value_and_grads(Attn(plain), (x,), weights)
    assert abs(value - ref_value) <= 1e-5 * abs(ref_value) + 1e-5
    assert rel_err(dx, ref_dx) < 1e-4
    for grad, ref in zip(dparams, ref_dparams):
        assert rel_err(grad, ref) < 1e-4


def test_switch_off_and_export_use_the_standard_operators(monkeypatch):
    monkeypatch.setenv("SOFT_CPU_KERNELS", "0")
    assert soft_kernels.load() is None
    assert not NewtonInverse(2).use_cpu_kernels and not HeadwiseConv(2, 3).use_cpu_kernels
    assert not TanhGELU().use_cpu_kernels
    monkeypatch.delenv("SOFT_CPU_KERNELS")
    net = prepare_for_export(create_model("soft_tiny", num_classes=4))
    assert not any(getattr(cell, "use_cpu_kernels", False) for _, cell in net.cells_and_names())
