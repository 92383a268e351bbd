"""Fixed-landmark SOFT (landmarks='pool'): m no longer grows with the input; same weights; it trains."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from helpers import rel_err
from models import create_model
from models.softmax_free_transformer import SoftKernelAttention

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("grid", [None, 7])
def test_landmark_count_is_fixed_only_with_a_landmark_grid(grid):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    kernel = SoftKernelAttention(head_dim=8, ratio=8, landmark_grid=grid)
    counts = []
    for height, width in [(56, 56), (112, 112), (224, 160)]:
        q = ms.Tensor(np.random.default_rng(0).standard_normal((1, 2, height * width, 8)).astype(np.float32))
        marks = kernel.landmarks(q, height, width)
        assert marks.shape[2] == kernel.num_landmarks(height, width)
        counts.append(marks.shape[2])
    ms.set_context(mode=ms.GRAPH_MODE)
    assert counts == ([49, 49, 49] if grid else [49, 196, 560])


def test_pool_landmarks_equal_conv_landmarks_at_224_with_the_same_weights():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    conv = create_model("soft_tiny", num_classes=10)
    pool = create_model("soft_tiny", num_classes=10, landmarks="pool")
    ms.load_param_into_net(pool, {p.name: p for p in conv.get_parameters()}, strict_load=True)
    conv.set_train(False)
    pool.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32))
    assert rel_err(pool(x).asnumpy(), conv(x).asnumpy()) < 1e-6


def test_fixed_landmark_model_trains():
    """landmark_grid=1 makes pooling active at 64 x 64 (stage 1: a 16 x 16 map pooled to 8 x 8)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = create_model("soft_tiny", num_classes=10, landmarks="pool", landmark_grid=1)
    loss_net = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = nn.TrainOneStepCell(loss_net, nn.AdamWeightDecay(net.trainable_params(), learning_rate=2e-4))
    step.set_train(True)
    rng = np.random.default_rng(2)
    x = ms.Tensor(rng.standard_normal((4, 3, 64, 64)).astype(np.float32))
    y = ms.Tensor(np.arange(4, dtype=np.int32))
    losses = [float(step(x, y).asnumpy()) for _ in range(5)]
    assert losses[-1] < 0.2 * losses[0], losses


def test_unknown_landmark_mode_is_rejected():
    with pytest.raises(ValueError, match="landmarks"):
        create_model("soft_tiny", landmarks="grid")
