"""SOFT / SOFT-Norm backbones: parity with the PyTorch reference, batch independence, sizes, training."""
import numpy as np
import pytest

import mindspore as ms

from helpers import SHALLOW, convert_fixture, fixture_arrays, rel_err, requires_fixtures
from models import create_model

# SHALLOW where the depth changes nothing tested; parity runs the published depths

@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.both_paths
@pytest.mark.parametrize("arch, suffix", [("soft_tiny", ""), ("soft_norm_tiny", "_per_matrix")])
@requires_fixtures
@pytest.mark.parity
def test_logits_equal_the_pytorch_reference(tmp_path, arch, suffix):
    ckpt = convert_fixture(tmp_path, arch)
    ref = fixture_arrays(arch)
    for size in ("", "_160"):
        # a network per input size: recompiling one network for a second shape takes twice a fresh compile
        net = create_model(arch, pretrained=str(ckpt))
        net.set_train(False)
        ours = net(ms.Tensor(ref[f"input{size}"])).asnumpy()
        err = rel_err(ours, ref[f"logits{size}{suffix}"])
        assert err <= 1e-4, f"{arch} input{size}: max|d|/max|ref| = {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["soft_tiny", "soft_norm_tiny"])
def test_a_sample_gives_the_same_logits_alone_and_in_a_batch(arch):
    """The batch in graph mode, each sample alone in PyNative (a second graph-mode shape would recompile:
    twice a fresh compile; the two modes agree to 1e-5, tested below)."""
    ms.set_seed(0)
    net = create_model(arch, num_classes=10, depths=SHALLOW)
    net.set_train(False)
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((3, 3, 64, 96)).astype(np.float32)
    batch[1:] *= 4.0  # batch-mates of very different scale must not change sample 0
    together = net(ms.Tensor(batch)).asnumpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for i in range(3):
        alone = net(ms.Tensor(batch[i:i + 1])).asnumpy()
        assert rel_err(alone[0], together[i]) < 1e-5


@pytest.mark.slow
def test_stage_features_and_pooled_feature_have_the_documented_shapes():
    ms.set_context(mode=ms.PYNATIVE_MODE)  # shapes only: no graph compile needed
    net = create_model("soft_tiny", num_classes=0, depths=SHALLOW)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 64, 128)).astype(np.float32))
    feats = net.forward_stages(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 32), (2, 128, 8, 16), (2, 320, 4, 8), (2, 512, 2, 4)]
    assert tuple(net.forward_features(x).shape) == (2, 512)
    assert tuple(net(x).shape) == (2, 512)  # no head: the pooled feature


@pytest.mark.unit
@pytest.mark.parametrize("size", [(100, 100), (224, 200), (64, 33)])
def test_input_size_not_a_multiple_of_32_is_a_clear_error(size):
    net = create_model("soft_tiny", num_classes=10)
    x = ms.Tensor(np.zeros((1, 3) + size, np.float32))
    with pytest.raises(ValueError, match="multiples of 32"):
        net(x)


@pytest.mark.slow
def test_graph_mode_and_pynative_agree():
    ms.set_seed(0)
    net = create_model("soft_norm_tiny", num_classes=10, depths=SHALLOW)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32))
    graph = net(x).asnumpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    pynative = net(x).asnumpy()
    assert rel_err(pynative, graph) < 1e-5


def _shipped_step(backbone, lr=1e-3, **overrides):
    """What train.py trains with: the builder's network and the recipe's train step (constant lr, no decay)."""
    from src.builder import build_network
    from src.model_utils.config import make_config
    from src.train_step import build_train_step

    config = make_config(dict({"backbone": backbone, "class_num": 10, "weight_decay": 0.0, "clip_grad": 0.0,
                               "lr_max": lr, "model_args": {"depths": list(SHALLOW)}}, **overrides))
    net, _ = build_network(config, "train")
    return net, build_train_step(config, net)


def _one_hot(labels, classes=10):
    return ms.Tensor(np.eye(classes, dtype=np.float32)[labels])


@pytest.mark.both_paths
@pytest.mark.slow
def test_one_training_step_updates_every_parameter():
    ms.set_seed(0)
    net, step = _shipped_step("soft_tiny", drop_path_rate=0.1)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.standard_normal((4, 3, 64, 64)).astype(np.float32))
    loss = float(step(x, _one_hot(rng.integers(0, 10, 4)))[0].asnumpy())
    assert np.isfinite(loss)
    frozen = [name for name, p in ((p.name, p) for p in net.trainable_params())
              if np.array_equal(before[name], p.asnumpy())]
    assert not frozen, f"parameters not updated by a training step: {frozen}"


@pytest.mark.slow
def test_a_few_steps_on_one_batch_drive_the_loss_down():
    ms.set_seed(0)
    _, step = _shipped_step("soft_norm_tiny", lr=2e-4)
    rng = np.random.default_rng(4)
    x = ms.Tensor(rng.standard_normal((8, 3, 64, 64)).astype(np.float32))
    y = _one_hot(np.arange(8) % 10)
    losses = [float(step(x, y)[0].asnumpy()) for _ in range(5)]
    assert losses[-1] < 0.2 * losses[0], losses


@pytest.mark.both_paths
@pytest.mark.slow
@pytest.mark.parametrize("amp_level", ["O2", "O3"])
def test_mixed_precision_training_keeps_the_kernel_in_float32_and_learns(amp_level):
    ms.set_seed(0)
    net, step = _shipped_step("soft_tiny", lr=2e-4, amp_level=amp_level, loss_scale=1024.0)
    kernels = [cell for _, cell in net.cells_and_names() if getattr(cell, "keep_fp32", False)]
    assert kernels and all(cell.get_flags().get("fp32") for cell in kernels)
    rng = np.random.default_rng(5)
    x = ms.Tensor(rng.standard_normal((4, 3, 64, 64)).astype(np.float32))
    y = _one_hot(np.arange(4))
    losses = [float(step(x, y)[0].asnumpy()) for _ in range(4)]
    assert np.isfinite(losses).all() and losses[-1] < 0.2 * losses[0], losses
