"""The training step cell: loss scaling (fixed / dynamic), skipped non-finite steps, device-side statistics,
mixed precision, ``mindspore.train.Model`` and SwiftFormer distillation."""
import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from models.checkpoint import TRAINING_STATE_PREFIXES  # noqa: E402
from src.model_utils.config import make_config  # noqa: E402
from src.train_step import build_train_step  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


class _Tiny(nn.Cell):
    """[B, 4] -> [B, 3] through a BatchNorm (moving statistics) and ReLU."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Dense(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Dense(8, 3)

    def construct(self, x):
        return self.fc2(ops.relu(self.bn(self.fc1(x))))


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    return ms.Tensor(x), ms.Tensor(y)


def _step(**overrides):
    ms.set_seed(0)
    net = _Tiny()
    values = {"class_num": 3, "lr_max": 1e-2, "clip_grad": 1.0, "loss_scale": 8.0}
    values.update(overrides)
    return net, build_train_step(make_config(values), net)


def _state(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


@pytest.mark.both_paths
@pytest.mark.unit
def test_outputs_parameters_and_statistics():
    net, step = _step(model_ema=True, model_ema_decay=0.5)
    x, y = _batch()
    loss, applied, scale = step(x, y)
    assert loss.shape == () and loss.dtype == ms.float32 and bool(applied.asnumpy())
    assert scale.dtype == ms.float32 and float(scale.asnumpy()) == 8.0
    first = float(loss.asnumpy())
    for _ in range(9):
        loss, _, _ = step(x, y)
    assert float(loss.asnumpy()) < first
    stats = step.read_stats()
    assert stats["loss_count"] == 10 and stats["global_step"] == 10 and stats["first_bad_step"] == -1
    assert stats["bad_streak"] == 0 and stats["worst_streak"] == 0 and stats["loss_scale"] == 8.0
    assert stats["mean_loss"] < first  # the losses went down from the first
    assert stats["mean_loss"] == pytest.approx(stats["loss_sum"] / 10)
    step.reset_stats()
    assert step.read_stats()["loss_count"] == 0 and np.isnan(step.read_stats()["mean_loss"])

    network_names = {p.name for p in net.get_parameters()}
    for name in (p.name for p in step.get_parameters()):
        assert name in network_names or name.startswith(TRAINING_STATE_PREFIXES), name
    saved = {p.name for p in step.checkpoint_parameters()}
    assert "learning_rate" not in saved and {"loss_scale", "global_step", "train_state.loss_sum"} <= saved
    assert {"ema." + n for n in network_names} <= saved  # BatchNorm moving statistics included
    ema = _state(step)
    assert not np.allclose(ema["ema.fc1.weight"], net.fc1.weight.asnumpy())  # lags behind
    assert not np.allclose(ema["ema.bn.moving_mean"], 0.0)


class _Wide(_Tiny):
    """``_Tiny`` plus 1,100 scalar parameters added to its input (soft_huge has about 900 parameters)."""

    def __init__(self, count=1100):
        super().__init__()
        self.offsets = ms.ParameterTuple([ms.Parameter(ms.Tensor(np.zeros(1, np.float32)), name=f"offset{i}")
                                          for i in range(count)])

    def construct(self, x):
        return super().construct(x + ops.addn(self.offsets))


@pytest.mark.unit
def test_a_network_of_over_a_thousand_parameters_trains_with_ema():
    """Graph mode unrolls a Python loop over parameters into nested calls (MindSpore stops at a depth of 1000):
    the EMA update, the statistics copy and restore and gradient centralisation map over the parameters."""
    ms.set_seed(0)
    net = _Wide()
    step = build_train_step(make_config({"class_num": 3, "lr_max": 1e-2, "model_ema": True, "model_ema_decay": 0.5,
                                         "gc_flag": True, "clip_grad": 1.0}), net)
    x, y = _batch()
    before = _state(step)
    assert bool(step(x, y)[1].asnumpy())
    after = _state(step)
    for name in ("ema.offset1099", "offset1099", "bn.moving_mean"):
        assert not np.array_equal(after[name], before[name]), name
    bad = ms.Tensor(np.full(x.shape, np.nan, np.float32))
    assert not bool(step(bad, y)[1].asnumpy())
    unchanged = _state(step)
    for name, value in after.items():
        if not name.startswith(("train_state.", "loss_scale")):
            np.testing.assert_array_equal(unchanged[name], value, err_msg=name)


@pytest.mark.unit
def test_sgd_step_trains_and_saves_only_state():
    net, step = _step(opt="sgd", momentum=0.9, weight_decay=1e-4)
    x, y = _batch()
    first = float(step(x, y)[0].asnumpy())
    for _ in range(5):
        loss, applied, _ = step(x, y)
    assert bool(applied.asnumpy()) and float(loss.asnumpy()) < first
    network_names = {p.name for p in net.get_parameters()}
    saved = {p.name for p in step.checkpoint_parameters()}
    assert {"moments.fc1.weight", "global_step"} <= saved
    assert all(n in network_names or n.startswith(TRAINING_STATE_PREFIXES) for n in saved), saved - network_names


@pytest.mark.both_paths
@pytest.mark.unit
def test_non_finite_step_changes_nothing():
    net, step = _step(model_ema=True, model_ema_decay=0.9)
    x, y = _batch()
    step(x, y)
    before = _state(step)
    bad = ms.Tensor(np.full((16, 4), np.nan, np.float32))
    loss, applied, _ = step(bad, y)
    assert not bool(applied.asnumpy())
    after = _state(step)
    changed = {k for k in before if not np.array_equal(before[k], after[k], equal_nan=True)}
    assert changed <= {"train_state.loss_sum", "train_state.loss_count", "train_state.bad_streak",
                       "train_state.worst_streak", "train_state.first_bad_step"}, changed
    assert {"train_state.bad_streak", "train_state.first_bad_step"} <= changed  # weights, moments, EMA, BN kept
    step(bad, y)
    stats = step.read_stats()
    assert stats["bad_streak"] == 2 and stats["worst_streak"] == 2 and stats["first_bad_step"] == 1
    assert stats["global_step"] == 1
    step(x, y)
    stats = step.read_stats()
    assert stats["bad_streak"] == 0 and stats["worst_streak"] == 2 and stats["global_step"] == 2
    assert np.isfinite(before["fc1.weight"]).all() and np.isfinite(net.fc1.weight.asnumpy()).all()


@pytest.mark.both_paths
@pytest.mark.unit
def test_dynamic_loss_scale_halves_skips_and_grows():
    ms.set_seed(0)
    net = ms.amp.auto_mixed_precision(_Tiny(), "O3")  # float16 gradients: 2^24 times the loss overflows them
    step = build_train_step(make_config({"class_num": 3, "lr_max": 1e-2, "loss_scale_type": "dynamic",
                                         "loss_scale": 2.0 ** 24, "scale_window": 3}), net)
    x, y = _batch()
    before = _state(step)
    _, applied, scale = step(x, y)
    assert not bool(applied.asnumpy()) and float(scale.asnumpy()) == 2.0 ** 23
    after = _state(step)
    assert all(np.array_equal(before[k], after[k]) for k in before if not k.startswith(("train_state.", "loss_scale")))

    step.loss_scale.set_data(ms.Tensor(4.0, ms.float32))
    scales = [float(step(x, y)[2].asnumpy()) for _ in range(7)]
    assert scales == [4.0, 4.0, 8.0, 8.0, 8.0, 16.0, 16.0]  # doubles after every window of 3 good steps
    assert step.read_stats()["global_step"] == 7

    step.loss_scale.set_data(ms.Tensor(1.0, ms.float32))
    bad = ms.Tensor(np.full((16, 4), np.inf, np.float32))
    assert float(step(bad, y)[2].asnumpy()) == 1.0  # never below 1
    assert int(step.loss_scale_good_steps.asnumpy()) == 0


@pytest.mark.both_paths
@pytest.mark.unit
def test_fixed_loss_scale_under_o3_trains():
    ms.set_seed(0)
    net = ms.amp.auto_mixed_precision(_Tiny(), "O3")
    step = build_train_step(make_config({"class_num": 3, "lr_max": 1e-2, "loss_scale": 128.0}), net)
    x, y = _batch()
    first = float(step(x, y)[0].asnumpy())
    for _ in range(5):
        loss, applied, scale = step(x, y)
    assert bool(applied.asnumpy()) and float(scale.asnumpy()) == 128.0
    assert float(loss.asnumpy()) < first
    assert all(p.dtype == ms.float32 for p in net.trainable_params())  # float32 master weights


class _Losses(ms.train.Callback):
    def __init__(self):
        self.outputs = []

    def on_train_step_end(self, run_context):
        self.outputs.append(run_context.original_args().net_outputs)


@pytest.mark.unit
def test_runs_under_model_train():
    import mindspore.dataset as ds

    _, step = _step()
    x, y = _batch(n=12)
    data = ds.NumpySlicesDataset({"image": x.asnumpy(), "label": y.asnumpy()}, shuffle=False).batch(4)
    recorder = _Losses()
    ms.train.Model(step).train(2, data, callbacks=[recorder], dataset_sink_mode=False)
    assert len(recorder.outputs) == 6
    loss, applied, scale = recorder.outputs[-1]
    assert loss.shape == () and bool(applied.asnumpy()) and float(scale.asnumpy()) == 8.0
    assert step.read_stats()["global_step"] == 6 and step.read_stats()["loss_count"] == 6


# ----------------------------------------------------------------------------------------- distillation
_SMALL_SWIFT = {"embed_dims": (16, 16, 32, 32), "depths": (1, 1, 1, 1)}


def _distillation_setup(tmp_path, **overrides):
    from models import create_model

    ms.set_seed(0)
    teacher_path = tmp_path / "teacher.ckpt"
    ms.save_checkpoint(create_model("SwiftFormer_XS", num_classes=4), str(teacher_path))
    student = create_model("SwiftFormer_XS", num_classes=4, **_SMALL_SWIFT)
    values = {"backbone": "SwiftFormer_XS", "class_num": 4, "lr_max": 5e-3, "loss_scale": 1.0,
              "distillation_type": "hard", "distillation_alpha": 0.5, "teacher_model": "SwiftFormer_XS",
              "teacher_path": str(teacher_path)}
    values.update(overrides)
    return student, make_config(values)


class _Heads(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x):
        head, dist = self.net(x)
        return ops.stack((head, dist))


def _cross_entropy(logits, classes):
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(classes)), classes].mean())


@pytest.mark.slow  # three graphs (teacher, training step, heads) of SwiftFormer: about a minute on 2 cores
def test_hard_distillation_moves_the_dist_head_towards_the_teacher(tmp_path):
    student, config = _distillation_setup(tmp_path)
    step = build_train_step(config, student)
    teacher = step.net_with_loss.teacher
    assert all(p.name.startswith("teacher.") and not p.requires_grad for p in teacher.get_parameters())
    assert not any(p.name.startswith("teacher.") for p in step.optimizer.parameters)
    assert not any(p.name.startswith("teacher.") for p in step.checkpoint_parameters())
    assert not teacher.network.training  # stays in evaluation mode inside a training cell

    images = ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    teacher_class = teacher(images).asnumpy().argmax(-1)
    label_class = (teacher_class + 1) % 4  # labels that disagree with the teacher everywhere
    targets = ms.Tensor(np.eye(4, dtype=np.float32)[label_class])
    frozen = {p.name: p.asnumpy().copy() for p in teacher.get_parameters()}

    heads = _Heads(student)
    start = heads(images).asnumpy()
    for _ in range(12):
        step(images, targets)
    end = heads(images).asnumpy()
    # the dist head learns the teacher's classes, the class head the labels
    assert _cross_entropy(end[1], teacher_class) < _cross_entropy(start[1], teacher_class) - 0.5
    assert _cross_entropy(end[0], label_class) < _cross_entropy(start[0], label_class) - 0.5
    assert (end[1].argmax(-1) == teacher_class).all() and (end[0].argmax(-1) == label_class).all()
    assert all(np.array_equal(p.asnumpy(), frozen[p.name]) for p in teacher.get_parameters())


@pytest.mark.unit
def test_distillation_configuration_errors(tmp_path):
    student, config = _distillation_setup(tmp_path, teacher_path=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="teacher_path: Checkpoint file not found"):
        build_train_step(config, student)
    student, config = _distillation_setup(tmp_path, teacher_model="soft_tiny")
    with pytest.raises(ValueError, match="teacher_path: .*SwiftFormer_XS.*soft_tiny|teacher_path: .*does not fit"):
        build_train_step(config, student)
    student, config = _distillation_setup(tmp_path, teacher_model="")
    with pytest.raises(ValueError, match="needs a teacher"):
        build_train_step(config, student)
    with pytest.raises(ValueError, match="has none"):
        build_train_step(config, _Tiny())
