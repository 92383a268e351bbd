"""Pure pieces of the trainer: schedules, weight-decay groups, losses, metric, train step, checkpoints."""
import math
import os
from types import SimpleNamespace

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mindspore import nn  # noqa: E402

from src.callback import CheckpointManager, find_latest_checkpoint, is_eval_epoch, read_checkpoint_meta  # noqa: E402
from src.cross_entropy import ClassificationLoss, CrossEntropySmooth, SoftTargetCrossEntropy, get_loss  # noqa: E402
from src.lr_generator import get_lr  # noqa: E402
from src.metric import TopKAccuracy, topk_correct  # noqa: E402
from models.checkpoint import load_weights  # noqa: E402
from models.cpu import FlatSquaredNorm  # noqa: E402
from src.model_utils.config import make_config  # noqa: E402
from src.optimizer import GradientPreprocess, build_optimizer, split_weight_decay, uses_weight_decay  # noqa: E402
from src.train_step import build_train_step  # noqa: E402

pytestmark = pytest.mark.unit

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


# ----------------------------------------------------------------------------------------- schedules
STEPS, EPOCHS, WARM = 10, 12, 2


@pytest.mark.parametrize("mode", ["cosine", "exponential", "step", "constant"])
def test_lr_warmup_and_ends(mode):
    lr = get_lr(1e-5, 1e-3, 1e-5 if mode != "constant" else 0.0, WARM, EPOCHS, STEPS, mode)
    assert lr.dtype == np.float32 and lr.shape == (EPOCHS * STEPS,)
    warm = WARM * STEPS
    assert lr[0] == pytest.approx(1e-5)                                   # warmup start = lr_init
    assert lr[warm // 2] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)     # linear
    assert lr[warm - 1] == pytest.approx(1e-5 + (1e-3 - 1e-5) * (warm - 1) / warm)
    assert lr[warm] == pytest.approx(1e-3)                                # warmup end = lr_max
    last = {"cosine": 1e-5, "exponential": 1e-5, "step": 1e-5, "constant": 1e-3}[mode]
    assert lr[-1] == pytest.approx(last, rel=1e-5)
    assert np.all(np.diff(lr[warm:]) <= 1e-12)                            # never rises after warmup
    assert np.all(np.diff(lr[:warm + 1]) > 0)


def test_lr_decay_shapes():
    decay = (EPOCHS - WARM) * STEPS
    t = np.arange(decay) / (decay - 1)
    cos = get_lr(0.0, 1e-3, 1e-5, WARM, EPOCHS, STEPS, "cosine")[WARM * STEPS:]
    np.testing.assert_allclose(cos, 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * t)), rtol=1e-5)
    exp = get_lr(0.0, 1e-3, 1e-5, WARM, EPOCHS, STEPS, "exponential")[WARM * STEPS:]
    np.testing.assert_allclose(exp, 1e-3 * (1e-2) ** t, rtol=1e-5)
    step = get_lr(0.0, 1e-3, 0.0, WARM, 11, STEPS, "step")  # 9 decay epochs: 3 + 3 + 3
    per_epoch = step[::STEPS]
    np.testing.assert_allclose(per_epoch[2:], [1e-3] * 3 + [1e-4] * 3 + [1e-5] * 3, rtol=1e-5)
    assert np.all(step[2 * STEPS:3 * STEPS] == step[2 * STEPS])        # constant within an epoch


def test_lr_no_warmup_and_errors():
    lr = get_lr(0.0, 0.1, 0.0, 0, 2, 3, "cosine")
    assert lr[0] == pytest.approx(0.1) and lr[-1] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="lr_decay_mode"):
        get_lr(0, 1, 0, 0, 2, 3, "poly")
    with pytest.raises(ValueError, match="lr_min > 0"):
        get_lr(0, 1, 0, 0, 2, 3, "exponential")
    with pytest.raises(ValueError, match="warmup_epochs"):
        get_lr(0, 1, 0, 5, 2, 3, "cosine")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        get_lr(0, 1, 0, 0, 2, 0, "cosine")


# ----------------------------------------------------------------------------------------- weight decay
class _Toy(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, has_bias=True)
        self.norm = nn.LayerNorm((16,))
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Dense(16, 4)
        self.pos_embed1 = ms.Parameter(ms.Tensor(np.zeros((1, 4, 16), np.float32)))
        self.cls_token = ms.Parameter(ms.Tensor(np.zeros((1, 1, 16), np.float32)))
        self.rel_table = ms.Parameter(ms.Tensor(np.zeros((7, 16), np.float32)))

    def no_weight_decay(self):
        return {"cls_token"}

    def construct(self, x):
        y = self.bn(self.conv(x)).mean((2, 3)) + self.pos_embed1.sum() + self.cls_token.sum() + self.rel_table.sum()
        return self.head(self.norm(y))


def test_weight_decay_groups_by_name():
    net = _Toy()
    decay, no_decay = split_weight_decay(net)
    assert sorted(p.name for p in decay) == ["conv.weight", "head.weight", "pos_embed1", "rel_table"]
    assert sorted(p.name for p in no_decay) == sorted(["conv.bias", "norm.gamma", "norm.beta", "bn.gamma", "bn.beta",
                                                       "head.bias", "cls_token"])
    decay, _ = split_weight_decay(net, "rel_table, head., pos_embed")
    assert sorted(p.name for p in decay) == ["conv.weight"]
    decay, _ = split_weight_decay(net.trainable_params())  # a plain list: no model hook
    assert "cls_token" in {p.name for p in decay}
    assert uses_weight_decay("stage1.pos_embed", (1, 3136, 64))  # the original decays the positional tables
    assert not uses_weight_decay("cls_token", (1, 1, 64), skip_names={"cls_token"})
    assert not uses_weight_decay("blocks.0.attn.proj.bias", (2, 2))
    assert uses_weight_decay("blocks.0.attn.q.weight", (64, 64))


def test_weight_decay_on_soft_tiny_names():
    from models import create_model
    net = create_model("soft_tiny", num_classes=10)
    decay, no_decay = split_weight_decay(net)
    names = {p.name for p in no_decay}
    assert all(p.ndim >= 2 and (p.name.endswith("weight") or p.name.startswith("pos_embed")) for p in decay), \
        [p.name for p in decay][:5]
    assert not any("pos_embed" in n for n in names) and "cls_token" in names
    assert all(n.endswith(("bias", "gamma", "beta")) or n == "cls_token" for n in names)
    assert not any("moving_" in p.name for p in decay + no_decay)


@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
def test_optimizer_applies_groups(opt_name):
    net = _Toy()
    config = SimpleNamespace(opt=opt_name, weight_decay=0.05, beta1=0.9, beta2=0.999, eps=1e-8, momentum=0.9,
                             no_weight_decay_filter="")
    opt = build_optimizer(config, net, get_lr(0, 1e-3, 0, 0, 1, 4))
    wd = {p.name: float(w.asnumpy()) for p, w in zip(opt.parameters, opt.weight_decay)}
    assert wd["conv.weight"] == pytest.approx(0.05) and wd["head.weight"] == pytest.approx(0.05)
    assert wd["pos_embed1"] == pytest.approx(0.05)  # decayed, as in the original recipe
    assert wd["cls_token"] == 0 and wd["norm.gamma"] == 0 and wd["conv.bias"] == 0
    assert [p.name for p in opt.parameters] == [p.name for p in net.trainable_params()]
    with pytest.raises(ValueError, match="opt"):
        build_optimizer(SimpleNamespace(**{**vars(config), "opt": "lamb"}), net.trainable_params(), 0.1)


def test_gradient_centralisation_clipping_unscaling_and_the_finiteness_check():
    net = _Toy()
    params = net.trainable_params()
    rng = np.random.default_rng(0)
    grads = tuple(ms.Tensor(rng.normal(size=p.shape).astype(np.float32) + 3.0) for p in params)
    one, four = ms.Tensor(1.0, ms.float32), ms.Tensor(4.0, ms.float32)
    out, finite = GradientPreprocess(params, gc_flag=True, clip_grad=0.0, unscale=False)(grads, one)
    assert bool(finite.asnumpy())
    by_name = {p.name: (g.asnumpy(), o.asnumpy()) for p, g, o in zip(params, grads, out)}
    g, o = by_name["conv.weight"]
    np.testing.assert_allclose(o, g - g.mean(axis=(1, 2, 3), keepdims=True), atol=1e-5)
    g, o = by_name["head.weight"]
    np.testing.assert_allclose(o, g - g.mean(axis=1, keepdims=True), atol=1e-5)
    for name in ("conv.bias", "norm.gamma", "pos_embed1"):
        np.testing.assert_array_equal(by_name[name][0], by_name[name][1])
    clipped, finite = GradientPreprocess(params, gc_flag=False, clip_grad=1.0)(grads, one)
    assert bool(finite.asnumpy())
    total = math.sqrt(sum(float((c.asnumpy().astype(np.float64) ** 2).sum()) for c in clipped))
    assert total == pytest.approx(1.0, rel=1e-4)
    ratio = clipped[0].asnumpy() / grads[0].asnumpy()
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-4)  # one common factor
    # gradients of a loss scaled by 4 give the same result, with and without clipping (and with centralisation)
    scaled = tuple(g * 4.0 for g in grads)
    for gc_flag, clip in ((False, 1.0), (True, 0.0)):
        ref, _ = GradientPreprocess(params, gc_flag=gc_flag, clip_grad=clip, unscale=False)(grads, one)
        got, finite = GradientPreprocess(params, gc_flag=gc_flag, clip_grad=clip)(scaled, four)
        assert bool(finite.asnumpy())
        for r, o in zip(ref, got):
            np.testing.assert_allclose(o.asnumpy(), r.asnumpy(), rtol=1e-5, atol=1e-6)
    # a norm under the limit is left alone (after unscaling)
    small = tuple(g * 1e-3 for g in grads)
    kept, _ = GradientPreprocess(params, clip_grad=1e6)(small, one)
    for g, k in zip(small, kept):
        np.testing.assert_allclose(k.asnumpy(), g.asnumpy(), rtol=1e-6)
    # one Inf or NaN anywhere: not finite, with and without clipping
    for bad, clip in ((np.inf, 1.0), (-np.inf, 0.0), (np.nan, 1.0), (np.nan, 0.0)):
        broken = list(grads)
        values = grads[-1].asnumpy().copy()
        values.flat[0] = bad
        broken[-1] = ms.Tensor(values)
        for squared_norm in (None, FlatSquaredNorm()):  # the standard operators and the CPU layer's
            _, finite = GradientPreprocess(params, clip_grad=clip, squared_norm=squared_norm)(tuple(broken), one)
            assert not bool(finite.asnumpy()), (bad, clip, squared_norm)


def test_cpu_layer_squared_norm_gives_the_same_clipped_gradients():
    """The CPU layer's global norm (one Concat + matmul) against Square + ReduceSum / all_finite: the same clipped
    gradients and the same finiteness, with and without clipping."""
    net = _Toy()
    params = net.trainable_params()
    rng = np.random.default_rng(1)
    grads = tuple(ms.Tensor(rng.normal(size=p.shape).astype(np.float32)) for p in params)
    scale = ms.Tensor(8.0, ms.float32)
    for clip in (0.5, 0.0):
        results = []
        for squared_norm in (FlatSquaredNorm(), None):
            out, finite = GradientPreprocess(params, clip_grad=clip, squared_norm=squared_norm)(grads, scale)
            assert bool(finite.asnumpy())
            results.append([o.asnumpy() for o in out])
        for fast, plain in zip(*results):
            np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------- losses
def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_soft_target_cross_entropy_values():
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]], np.float32)
    target = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]], np.float32)
    # by hand: -(0.7 log p00 + 0.2 log p01 + 0.1 log p02) etc., averaged over the batch
    expected = float(np.mean(-(target * _log_softmax(logits.astype(np.float64))).sum(-1)))
    got = float(SoftTargetCrossEntropy()(ms.Tensor(logits), ms.Tensor(target)).asnumpy())
    assert got == pytest.approx(expected, rel=1e-5)
    # one-hot target: log(sum exp) - logit of the class
    onehot = np.eye(3, dtype=np.float32)[[0, 1]]
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    expected = float(np.mean(lse - logits[[0, 1], [0, 1]]))
    assert float(SoftTargetCrossEntropy()(ms.Tensor(logits), ms.Tensor(onehot)).asnumpy()) == pytest.approx(expected,
                                                                                                             rel=1e-5)


def test_hard_label_smoothing_values():
    logits = np.array([[2.0, 1.0, 0.1, -0.3], [0.5, 2.5, -1.0, 0.0]], np.float32)
    labels = np.array([0, 3], np.int32)
    eps, c = 0.1, 4
    target = np.full((2, c), eps / c)
    target[np.arange(2), labels] += 1 - eps
    expected = float(np.mean(-(target * _log_softmax(logits.astype(np.float64))).sum(-1)))
    got = float(CrossEntropySmooth(c, eps)(ms.Tensor(logits), ms.Tensor(labels)).asnumpy())
    assert got == pytest.approx(expected, rel=1e-5)
    both = ClassificationLoss(c, eps)
    assert float(both(ms.Tensor(logits), ms.Tensor(labels)).asnumpy()) == pytest.approx(expected, rel=1e-5)
    assert float(both(ms.Tensor(logits), ms.Tensor(target.astype(np.float32))).asnumpy()) == pytest.approx(expected,
                                                                                                            rel=1e-5)
    with pytest.raises(ValueError):
        CrossEntropySmooth(4, 1.0)


def test_loss_literal_values():
    # softmax(log([1, 3])) = [0.25, 0.75]; smoothing 0.2 over 2 classes: target [0.1, 0.9]
    logits = ms.Tensor(np.log(np.array([[1.0, 3.0]], np.float32)))
    expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))  # 0.3975433
    assert expected == pytest.approx(0.3975433, abs=1e-7)
    got = float(CrossEntropySmooth(2, 0.2)(logits, ms.Tensor(np.array([1], np.int32))).asnumpy())
    assert got == pytest.approx(expected, abs=5e-6)  # float32
    uniform = float(SoftTargetCrossEntropy()(ms.Tensor(np.zeros((2, 3), np.float32)),
                                             ms.Tensor(np.eye(3, dtype=np.float32)[[0, 2]])).asnumpy())
    assert uniform == pytest.approx(math.log(3), abs=5e-6)


def test_tuple_outputs_are_averaged():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    target = rng.dirichlet(np.ones(5), size=3).astype(np.float32)
    loss = SoftTargetCrossEntropy()
    la = float(loss(ms.Tensor(a), ms.Tensor(target)).asnumpy())
    lb = float(loss(ms.Tensor(b), ms.Tensor(target)).asnumpy())
    got = float(loss((ms.Tensor(a), ms.Tensor(b)), ms.Tensor(target)).asnumpy())
    assert got == pytest.approx((la + lb) / 2, rel=1e-5)


def test_distillation_loss_values():
    from src.cross_entropy import DistillationLoss

    rng = np.random.default_rng(2)
    head, dist, teacher = (rng.normal(size=(3, 5)).astype(np.float32) for _ in range(3))
    target = rng.dirichlet(np.ones(5), size=3).astype(np.float32)
    base = float(np.mean(-(target * _log_softmax(head.astype(np.float64))).sum(-1)))
    outputs = (ms.Tensor(head), ms.Tensor(dist))
    # hard (DeiT): CE of the dist head against the teacher's arg-max class
    hard = float(np.mean(-_log_softmax(dist.astype(np.float64))[np.arange(3), teacher.argmax(-1)]))
    got = DistillationLoss(SoftTargetCrossEntropy(), "hard", alpha=0.3)(outputs, ms.Tensor(target), ms.Tensor(teacher))
    assert float(got.asnumpy()) == pytest.approx(0.7 * base + 0.3 * hard, rel=1e-5)
    # soft (DeiT): KL(teacher || student) at temperature tau, times tau^2, summed over B x C / (B * C)
    tau = 2.0
    log_s, log_t = _log_softmax(dist / tau), _log_softmax(teacher / tau)
    soft = float((np.exp(log_t) * (log_t - log_s)).sum() * tau * tau / dist.size)
    got = DistillationLoss(SoftTargetCrossEntropy(), "soft", alpha=0.5, tau=tau)(outputs, ms.Tensor(target),
                                                                                ms.Tensor(teacher))
    assert float(got.asnumpy()) == pytest.approx(0.5 * base + 0.5 * soft, rel=1e-5)
    with pytest.raises(ValueError, match="soft or hard"):
        DistillationLoss(SoftTargetCrossEntropy(), "none")


def test_get_loss_names():
    config = SimpleNamespace(loss_name="ce_smooth_mixup", class_num=10, use_label_smooth=1, label_smooth_factor=0.1)
    assert isinstance(get_loss(config), ClassificationLoss)
    with pytest.raises(ValueError, match="loss_name"):
        get_loss(SimpleNamespace(**{**vars(config), "loss_name": "focal"}))


# ----------------------------------------------------------------------------------------- metric
def test_topk_metric_skips_padding_and_counts_ties():
    logits = np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],    # label 1: top-1
                       [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],    # label 4: rank 5 -> top-5 only
                       [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],    # label 5: top-1
                       [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]],   # padding
                      np.float32)
    labels = np.array([1, 4, 5, -1], np.int32)
    assert topk_correct(logits, labels) == ([2, 3], 3)
    metric = TopKAccuracy()
    metric.update(logits[:2], labels[:2])
    metric.update((logits[2:], logits[2:]), labels[2:])  # tuple outputs are averaged
    result = metric.result()
    assert result["count"] == 3 and result["top1"] == pytest.approx(2 / 3) and result["top5"] == pytest.approx(1.0)
    other = TopKAccuracy()
    other.set_counts(metric.counts() * 2)
    assert other.result()["count"] == 6 and other.result()["top1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("epoch_list, interval, offset, max_epoch", [
    ([0, 1, 2, 3], 1, -1, 4),
    ([0, 2, 4], 2, -1, 5),          # offset -1 -> max_epoch % interval = 1: epochs 1, 3, 5 (1-based), ends on the last
    ([1, 3, 5], 2, -1, 6),
    ([2, 5, 7], 3, 0, 8),
    ([3, 5, 7], 2, 4, 8),           # from epoch 4 (1-based) on, every 2
    ([], 0, -1, 3),
])
def test_eval_schedule(epoch_list, interval, offset, max_epoch):
    assert [e for e in range(max_epoch) if is_eval_epoch(e, max_epoch, interval, offset)] == epoch_list


# ----------------------------------------------------------------------------------------- train step
class _Tiny(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Dense(4, 8)
        self.fc2 = nn.Dense(8, 3)

    def construct(self, x):
        return self.fc2(ops_relu(self.fc1(x)))


def ops_relu(x):
    return ms.ops.relu(x)


def _tiny_step(**kw):
    net = _Tiny()
    values = {"class_num": 3, "opt": "adamw", "weight_decay": 0.05, "no_weight_decay_filter": "", "loss_scale": 1.0}
    values.update(kw)
    step = build_train_step(make_config(values), net, get_lr(1e-2, 1e-2, 1e-2, 0, 1, 100, "constant"))
    return net, step.optimizer, step


def test_train_step_learns_and_skips_non_finite():
    net, opt, step = _tiny_step(loss_scale=128.0, clip_grad=1.0, model_ema=True, model_ema_decay=0.5)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(16, 4)).astype(np.float32))
    y = ms.Tensor(np.eye(3, dtype=np.float32)[rng.integers(0, 3, 16)])
    first, finite, _ = step(x, y)
    assert bool(finite.asnumpy())
    for _ in range(30):
        loss, _, _ = step(x, y)
    assert float(loss.asnumpy()) < float(first.asnumpy())
    assert int(opt.global_step.asnumpy()[0]) == 31
    ema = {p.name: p.asnumpy() for p in step.ema_params}
    assert set(ema) == {"ema." + p.name for p in net.get_parameters()}
    assert not np.allclose(ema["ema.fc1.weight"], net.fc1.weight.asnumpy())  # lags behind
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    bad = ms.Tensor(np.full((16, 4), np.nan, np.float32))
    loss, finite, _ = step(bad, y)
    assert not bool(finite.asnumpy())  # (ReLU maps NaN to 0 on CPU: the loss itself may stay finite)
    for p in net.trainable_params():
        np.testing.assert_array_equal(p.asnumpy(), before[p.name])  # no update
    assert int(opt.global_step.asnumpy()[0]) == 31


# ----------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_manager_keeps_newest_and_best(tmp_path):
    net, _, step = _tiny_step()
    manager = CheckpointManager(str(tmp_path), "tiny", keep_max=2)
    for epoch in range(1, 5):
        meta = {"epoch_num": epoch, "step_num": epoch * 7, "best_acc": 0.5, "class_names": '["a", "b", "c"]'}
        path = manager.save(step, epoch, 7, meta)
        if epoch == 2:
            manager.save_best(step, meta, same_as=path)
    names = sorted(os.listdir(tmp_path))
    assert names == ["best.ckpt", "tiny-3_7.ckpt", "tiny-4_7.ckpt"]  # no temporary files left
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / "tiny-4_7.ckpt")
    meta = read_checkpoint_meta(str(tmp_path / "best.ckpt"))
    assert meta["epoch_num"] == 2 and meta["class_names"] == ["a", "b", "c"]
    keys = ms.load_checkpoint(str(tmp_path / "tiny-4_7.ckpt"))
    assert "adam_m.fc1.weight" in keys and "global_step" in keys and "learning_rate" not in keys
    fresh = _Tiny()
    assert load_weights(fresh, str(tmp_path / "tiny-4_7.ckpt"))["epoch_num"] == 4
    np.testing.assert_array_equal(fresh.fc1.weight.asnumpy(), net.fc1.weight.asnumpy())


def test_network_checkpoint_mismatch_is_one_clear_error(tmp_path):
    _, _, step = _tiny_step()
    manager = CheckpointManager(str(tmp_path), "tiny", keep_max=1)
    path = manager.save(step, 1, 1, {"epoch_num": 1})

    class Other(nn.Cell):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Dense(4, 8)
            self.fc2 = nn.Dense(8, 5)
            self.extra = nn.Dense(2, 2)

        def construct(self, x):
            return x

    with pytest.raises(ValueError) as info:
        load_weights(Other(), path)
    text = str(info.value)
    assert "missing: extra.bias, extra.weight" in text and "mis-shaped: fc2.bias" in text
