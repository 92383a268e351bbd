"""Cells with hand-written backwards (for CPU speed) give the same values and gradients as MindSpore's own."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops

from models.layers import Dense, HeadwiseConv, LayerNorm

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
