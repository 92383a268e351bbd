"""Newton pseudo-inverses: values against numpy.linalg.inv, the analytic backward against finite differences."""
import numpy as np
import pytest

import mindspore as ms

from models.softmax_free_transformer import NewtonInverse, NewtonInverseNorm, gaussian_kernel

pytestmark = [pytest.mark.unit, pytest.mark.both_paths]


def _kernel_matrices(dtype, batch=2, heads=3, m=16, d=8, spread=0.6, seed=0):
    """Well-conditioned Gaussian-kernel matrices G(L, L) [batch, heads, m, m] of random landmarks."""
    rng = np.random.default_rng(seed)
    marks = (spread * rng.standard_normal((batch, heads, m, d))).astype(dtype)
    diff = marks[..., :, None, :] - marks[..., None, :, :]
    return np.exp(-0.5 * (diff ** 2).sum(-1)), marks


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def test_gaussian_kernel_matches_its_definition():
    expected, marks = _kernel_matrices(np.float32)
    ours = gaussian_kernel(ms.Tensor(marks), ms.Tensor(marks)).asnumpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_plain_newton_inverse_equals_inverse_of_the_regularised_matrix():
    mats, _ = _kernel_matrices(np.float32)
    ours = NewtonInverse(20)(ms.Tensor(mats)).asnumpy()
    expected = np.linalg.inv(mats.astype(np.float64) + 0.01 * np.eye(mats.shape[-1]))
    assert np.abs(ours - expected).max() / np.abs(expected).max() < 1e-4


def test_norm_newton_inverse_equals_the_inverse():
    mats, _ = _kernel_matrices(np.float32)
    ours = NewtonInverseNorm(20)(ms.Tensor(mats)).asnumpy()
    expected = np.linalg.inv(mats.astype(np.float64))
    assert np.abs(ours - expected).max() / np.abs(expected).max() < 1e-4


def test_norm_newton_start_is_taken_per_matrix():
    mats, _ = _kernel_matrices(np.float32)
    mats[1] *= 5.0  # a batch-mate with a very different scale
    inv = NewtonInverseNorm(2)  # few steps: the result still depends on the start
    together = inv(ms.Tensor(mats)).asnumpy()
    alone = inv(ms.Tensor(mats[:1])).asnumpy()
    np.testing.assert_allclose(together[0], alone[0], rtol=1e-5, atol=1e-6)


def test_iteration_count_must_be_a_positive_int():
    with pytest.raises(ValueError):
        NewtonInverse(0)
    with pytest.raises(ValueError):
        NewtonInverseNorm(2.5)


@pytest.mark.parametrize("cls, shift", [(NewtonInverse, 0.01), (NewtonInverseNorm, 0.0)])
def test_backward_is_the_analytic_inverse_gradient(cls, shift):
    """dL/dA of L = Σ W ⊙ inv(A) against central finite differences, in float64."""
    mats, _ = _kernel_matrices(np.float64, batch=1, heads=2, m=6, d=4, seed=1)
    weights = np.random.default_rng(2).standard_normal(mats.shape)
    inverse = cls(30)
    w = ms.Tensor(weights)

    def loss(a):
        return (inverse(a) * w).sum()

    grad = ms.grad(loss)(ms.Tensor(mats)).asnumpy()

    def exact_loss(a):
        return float((np.linalg.inv(a + shift * np.eye(a.shape[-1])) * weights).sum())

    eps = 1e-6
    numeric = np.zeros_like(mats)
    for idx in np.ndindex(*mats.shape):
        plus, minus = mats.copy(), mats.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (exact_loss(plus) - exact_loss(minus)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)
    # the Newton output itself moves like the exact inverse
    plus = mats.copy()
    plus[0, 0, 1, 2] += eps
    newton_fd = (float(loss(ms.Tensor(plus)).asnumpy()) - float(loss(ms.Tensor(mats)).asnumpy())) / eps
    assert abs(newton_fd - numeric[0, 0, 1, 2]) < 1e-4 * max(1.0, abs(numeric[0, 0, 1, 2]))
