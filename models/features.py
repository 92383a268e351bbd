"""Multi-scale feature maps for dense prediction: ``create_model(name, features_only=True, out_indices=...)``.

    >>> net = create_model("soft_tiny", features_only=True, out_indices=(1, 2, 3), pretrained="soft_tiny.ckpt")
    >>> c3, c4, c5 = net(x)                      # x [B, 3, H, W] -> [B, C_i, H/4/2^i, W/4/2^i], i = 1, 2, 3
    >>> net.feature_info                          # [{"index": 1, "num_chs": 128, "reduction": 8}, ...]

Every backbone offers ``forward_stages(x)`` (its four stage outputs) and ``embed_dims``; ``FeatureNet``
returns the selected ones as a tuple. The backbone is built without a classification head, and a
classification checkpoint loads into it with its head entries dropped (``head.*``, ``dist_head.*``).
"""
from mindspore import nn

from .checkpoint import CLASSIFIER_PREFIXES

__all__ = ["FeatureNet", "HEAD_PREFIXES", "STAGE_REDUCTIONS", "check_out_indices"]

#: checkpoint entries of classification heads, dropped when a feature extractor loads a classifier's weights
HEAD_PREFIXES = CLASSIFIER_PREFIXES
#: input size / stage map size of the four stages
STAGE_REDUCTIONS = (4, 8, 16, 32)


def check_out_indices(out_indices, stages=len(STAGE_REDUCTIONS)):
    """``out_indices`` as a tuple of ints; ValueError unless they are distinct stage indices in 0..stages-1."""
    indices = tuple(int(i) for i in out_indices)
    if not indices or any(not 0 <= i < stages for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"out_indices must be distinct stage indices in 0..{stages - 1}, got {out_indices!r}")
    return indices


class FeatureNet(nn.Cell):
    """The stage maps ``out_indices`` of ``backbone``: x [B, 3, H, W] -> tuple of [B, C_i, H/r_i, W/r_i].

    Parameter names are the backbone's (no prefix), so the backbone's checkpoints fit.
    """

    def __init__(self, backbone, out_indices=(0, 1, 2, 3)):
        super().__init__(auto_prefix=False)
        indices = check_out_indices(out_indices, len(backbone.embed_dims))
        self.backbone = backbone
        self.out_indices = indices
        self.feature_info = [{"index": i, "num_chs": int(backbone.embed_dims[i]), "reduction": STAGE_REDUCTIONS[i]}
                             for i in indices]

    def construct(self, x):
        maps = self.backbone.forward_stages(x)
        return tuple(maps[i] for i in self.out_indices)
