"""Classification losses.

* ``SoftTargetCrossEntropy``: ``mean_b( -sum_c target[b, c] * log_softmax(logits)[b, c] )`` for
  soft targets [B, C] (one-hot, label-smoothed, MixUp / CutMix mixtures).
* ``CrossEntropySmooth``: hard integer labels [B] with label smoothing ``eps``: the target is
  ``(1 - eps) * one_hot + eps / C`` (the timm convention used by the PyTorch reference).
* ``ClassificationLoss`` (what ``get_loss`` builds): picks one of the two from the label's rank, so
  it takes the soft targets of the training pipeline and hard labels alike.

Every loss accepts a tuple / list of logits (e.g. SwiftFormer's (head, distillation head) in
training mode) and returns the mean of the per-output losses. Logits are cast to float32 first,
so the loss is computed in float32 under mixed precision.

* ``DistillationLoss``: DeiT's loss for a (head, distillation head) network and a teacher's logits
  (``distillation_type`` soft or hard).
"""
import mindspore as ms
from mindspore import nn, ops

__all__ = ["SoftTargetCrossEntropy", "CrossEntropySmooth", "ClassificationLoss", "DistillationLoss", "get_loss",
           "LOSS_NAMES", "DISTILLATION_TYPES"]

DISTILLATION_TYPES = ("none", "soft", "hard")

# the original port's configs say "ce_smooth_mixup"; every name is the same cross entropy here
LOSS_NAMES = ("ce", "ce_smooth", "ce_smooth_mixup", "ce_mixup", "soft_target_ce", "cross_entropy",
              "crossentropy", "crossentropysmooth", "softmax_cross_entropy", "soft_target_cross_entropy")


class _LossBase(nn.Cell):
    def _single(self, logits, label):
        raise NotImplementedError

    def construct(self, logits, label):
        if isinstance(logits, (tuple, list)):
            total = self._single(logits[0], label)
            for i in range(1, len(logits)):
                total = total + self._single(logits[i], label)
            return total / len(logits)
        return self._single(logits, label)


class SoftTargetCrossEntropy(_LossBase):
    """Cross entropy against soft targets [B, C] (rows summing to 1)."""

    def _single(self, logits, label):
        logits = ops.cast(logits, ms.float32)
        label = ops.cast(label, ms.float32)
        logp = ops.log_softmax(logits, -1)
        return ops.mean(ops.reduce_sum(-label * logp, -1))


class CrossEntropySmooth(_LossBase):
    """Cross entropy against integer labels [B] with label smoothing ``smooth_factor``."""

    def __init__(self, num_classes, smooth_factor=0.0):
        super().__init__()
        if not 0.0 <= float(smooth_factor) < 1.0:
            raise ValueError(f"label_smooth_factor must be in [0, 1), got {smooth_factor}.")
        self.num_classes = int(num_classes)
        self.on_value = ms.Tensor(1.0 - float(smooth_factor) + float(smooth_factor) / self.num_classes, ms.float32)
        self.off_value = ms.Tensor(float(smooth_factor) / self.num_classes, ms.float32)

    def _single(self, logits, label):
        logits = ops.cast(logits, ms.float32)
        target = ops.one_hot(ops.cast(label, ms.int32), self.num_classes, self.on_value, self.off_value)
        logp = ops.log_softmax(logits, -1)
        return ops.mean(ops.reduce_sum(-target * logp, -1))


class ClassificationLoss(_LossBase):
    """Soft-target CE when ``label`` has the logits' rank ([B, C]); smoothed hard-label CE for [B]."""

    def __init__(self, num_classes, smooth_factor=0.0):
        super().__init__()
        self.soft = SoftTargetCrossEntropy()
        self.hard = CrossEntropySmooth(num_classes, smooth_factor)

    def _single(self, logits, label):
        if label.ndim == logits.ndim:
            return self.soft._single(logits, label)  # pylint: disable=protected-access
        return self.hard._single(logits, label)  # pylint: disable=protected-access


def get_loss(config):
    """The training loss named by ``config.loss_name`` (any of ``LOSS_NAMES``; all are cross entropy).

    The training pipeline already smooths / mixes its one-hot targets, so soft targets pass through
    unchanged; ``label_smooth_factor`` (when ``use_label_smooth``) applies to hard integer labels.
    """
    name = str(getattr(config, "loss_name", "ce") or "ce").lower()
    if name not in LOSS_NAMES:
        raise ValueError(f"Unknown loss_name {config.loss_name!r}; use one of: {', '.join(LOSS_NAMES)}.")
    smooth = float(config.label_smooth_factor) if getattr(config, "use_label_smooth", False) else 0.0
    return ClassificationLoss(int(config.class_num), smooth)


class DistillationLoss(nn.Cell):
    """DeiT distillation: ``(1 - alpha) * CE(head, targets) + alpha * D(dist_head, teacher)``.

    ``hard``: D = CE(dist_head, argmax teacher) (one-hot, no smoothing); ``soft``: D = KL(softmax(teacher / tau)
    || softmax(dist_head / tau)) * tau^2, summed and divided by B * C as DeiT does.

    Args:
        base_loss: the loss of the class head against the (soft) targets, e.g. ``ClassificationLoss``.
        distillation_type: ``soft`` or ``hard``.
        alpha: weight of the distillation term. tau: temperature of ``soft``.

    Inputs: ``outputs`` (head [B, C], dist_head [B, C]), ``targets`` [B, C] or [B], ``teacher_logits`` [B, C].
    """

    def __init__(self, base_loss, distillation_type, alpha=0.5, tau=1.0):
        super().__init__()
        if distillation_type not in ("soft", "hard"):
            raise ValueError(f"DistillationLoss needs distillation_type soft or hard, got {distillation_type!r}.")
        self.base_loss = base_loss
        self.hard = distillation_type == "hard"
        self.alpha = float(alpha)
        self.tau = float(tau)

    def construct(self, outputs, targets, teacher_logits):
        head, dist = outputs
        base = self.base_loss(head, targets)
        dist = ops.cast(dist, ms.float32)
        teacher_logits = ops.cast(teacher_logits, ms.float32)
        if self.hard:
            num_classes = teacher_logits.shape[-1]
            teacher_class = ops.one_hot(ops.argmax(teacher_logits, -1), num_classes, ops.ones((), ms.float32),
                                        ops.zeros((), ms.float32))
            distill = ops.mean(ops.reduce_sum(-teacher_class * ops.log_softmax(dist, -1), -1))
        else:
            log_student = ops.log_softmax(dist / self.tau, -1)
            log_teacher = ops.log_softmax(teacher_logits / self.tau, -1)
            distill = ops.reduce_sum(ops.exp(log_teacher) * (log_teacher - log_student)) \
                * (self.tau * self.tau) / dist.size
        return base * (1.0 - self.alpha) + distill * self.alpha
