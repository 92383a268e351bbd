"""Cells with hand-written backwards (for CPU speed) give the same values and gradients as MindSpore's own."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from models.layers import Conv2d, Dense, HeadwiseConv, LayerNorm
from models.softmax_free_transformer import GaussianKernel, gaussian_kernel
from models.swiftformer import L2Normalize

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def _grads(cell, x, weights):
    """Value and gradients (input, then parameters) of Σ cell(x) ⊙ weights."""
    def loss(inp):
        return (cell(inp) * weights).sum()
    grad_fn = ms.value_and_grad(loss, grad_position=0, weights=cell.trainable_params())
    value, (dx, dparams) = grad_fn(x)
    return value.asnumpy(), dx.asnumpy(), [g.asnumpy() for g in dparams]


@pytest.mark.parametrize("kernels", [True, False], ids=["cpu-kernel", "operators"])
@pytest.mark.parametrize("shape", [(2, 5, 16), (4, 600, 64)])  # the second: 153,600 elements, two threads
def test_layer_norm_matches_nn_layer_norm_forward_and_backward(shape, kernels):
    ours, ref = LayerNorm(shape[-1], 1e-5), nn.LayerNorm((shape[-1],), epsilon=1e-5)
    if kernels and not ours.norm_fn.use_cpu_kernels:
        pytest.skip("SOFT CPU kernels not built (make kernels) or switched off")
    ours.norm_fn.use_cpu_kernels = kernels
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32) * 3 + 1)
    w = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    gamma, beta = rng.standard_normal(shape[-1]).astype(np.float32), rng.standard_normal(shape[-1]).astype(np.float32)
    for cell in (ours, ref):
        cell.gamma.set_data(ms.Tensor(gamma))
        cell.beta.set_data(ms.Tensor(beta))
    for a, b in zip(_grads(ours, x, w), _grads(ref, x, w)):
        for p, q in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(q).max()))


@pytest.mark.parametrize("kernel", [3, 5, 9])
def test_headwise_conv_matches_grouped_conv_forward_and_backward(kernel):
    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.standard_normal((3, 4, 12, 10)).astype(np.float32))
    w = ms.Tensor(rng.standard_normal((3, 4, 12, 10)).astype(np.float32))
    ours = HeadwiseConv(4, kernel)
    ref = nn.Conv2d(4, 4, kernel, pad_mode="pad", padding=kernel // 2, group=4, has_bias=False)
    ref.weight.set_data(ours.weight.data)
    for a, b in zip(_grads(ours, x, w), _grads(ref, x, w)):
        for p, q in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(7, 12), (2, 9, 12)])
def test_dense_matches_nn_dense_forward_and_backward(shape):
    rng = np.random.default_rng(2)
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    w = ms.Tensor(rng.standard_normal(shape[:-1] + (6,)).astype(np.float32))
    ours, ref = Dense(12, 6), nn.Dense(12, 6)
    assert [p.name for p in ours.get_parameters()] == [p.name for p in ref.get_parameters()] == ["weight", "bias"]
    ref.weight.set_data(ours.weight.data)
    ref.bias.set_data(ours.bias.data)
    for a, b in zip(_grads(ours, x, w), _grads(ref, x, w)):
        for p, q in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_matches_nn_conv2d_forward_and_backward(stride):
    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.standard_normal((3, 4, 12, 10)).astype(np.float32))
    ours = Conv2d(4, 6, 3, stride=stride, pad_mode="pad", padding=1, has_bias=True, bias_init="normal")
    ref = nn.Conv2d(4, 6, 3, stride=stride, pad_mode="pad", padding=1, has_bias=True)
    assert [p.name for p in ours.get_parameters()] == [p.name for p in ref.get_parameters()] == ["weight", "bias"]
    ref.weight.set_data(ours.weight.data)
    ref.bias.set_data(ours.bias.data)
    w = ms.Tensor(rng.standard_normal(ref(x).shape).astype(np.float32))
    for a, b in zip(_grads(ours, x, w), _grads(ref, x, w)):
        for p, q in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


class _Autodiff(nn.Cell):
    def construct(self, a, b):
        return gaussian_kernel(a, b)


@pytest.mark.parametrize("same_input", [False, True], ids=["queries-landmarks", "landmarks-landmarks"])
def test_gaussian_kernel_gradient_matches_autodiff(same_input):
    rng = np.random.default_rng(2)
    a = ms.Tensor(rng.standard_normal((2, 3, 40, 8)).astype(np.float32) * 0.5)
    b = a[:, :, :6] * 1.0 if same_input else ms.Tensor(rng.standard_normal((2, 3, 6, 8)).astype(np.float32) * 0.5)
    w = ms.Tensor(rng.standard_normal((2, 3, 6, 6) if same_input else (2, 3, 40, 6)).astype(np.float32))

    def loss_fn(cell):
        if same_input:
            return lambda x, y: (cell(y, y) * w).sum()
        return lambda x, y: (cell(x, y) * w).sum()

    results = [ms.value_and_grad(loss_fn(cell), grad_position=(0, 1))(a, b) for cell in (GaussianKernel(), _Autodiff())]
    (ours_value, ours_grads), (ref_value, ref_grads) = results
    np.testing.assert_allclose(ours_value.asnumpy(), ref_value.asnumpy(), rtol=1e-6)
    assert float(np.abs(ref_grads[1].asnumpy()).max()) > 1e-3  # the comparison is not between zeros
    for ours, ref in zip(ours_grads, ref_grads):
        np.testing.assert_allclose(ours.asnumpy(), ref.asnumpy(), rtol=1e-4, atol=1e-5)


class _AutodiffL2(nn.Cell):
    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def construct(self, x):  # F.normalize as written before L2Normalize, differentiated by MindSpore
        return x / ops.sqrt(ops.maximum((x * x).sum(axis=self.axis, keepdims=True), 1e-24))


@pytest.mark.parametrize("axis", [1, (2, 3)], ids=["channels", "pixels"])
def test_l2_normalize_gradient_matches_autodiff(axis):
    rng = np.random.default_rng(4)
    values = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    values[0, :, 0, 0] = 0.0  # a zero token (clamped norm) ...
    values[1, 2] = 0.0        # ... and a zero channel map
    x = ms.Tensor(values)
    w = ms.Tensor(rng.standard_normal(values.shape).astype(np.float32))
    (ours_value, ours_dx, _), (ref_value, ref_dx, _) = _grads(L2Normalize(axis), x, w), _grads(_AutodiffL2(axis), x, w)
    np.testing.assert_allclose(ours_value, ref_value, rtol=1e-5)
    assert np.abs(ref_dx).max() > 0.1
    np.testing.assert_allclose(ours_dx, ref_dx, rtol=1e-4, atol=1e-5 * np.abs(ref_dx).max())
