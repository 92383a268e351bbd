"""SOFT and SOFT-Norm vision backbones (four stages: three SOFT stages, one softmax stage).

Input [B, 3, H, W] with H and W multiples of 32. Stage i works on an H/2^(i+1) x W/2^(i+1) token map
with D_i channels. Variants are rows of ``VARIANTS``; ``soft_norm_*`` differ only in the inverse.
"""
import re

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from .checkpoint import norm_layer_torch_names
from .registry import register_model
from .softmax_free_transformer import Block, SoftBlock

__all__ = ["SoftmaxFreeVisionTransformer", "VARIANTS"]

#: name -> (widths D_i, heads h_i, depths n_i); the published sizes (SPEC §3)
VARIANTS = {
    "tiny": ((64, 128, 320, 512), (2, 4, 10, 16), (1, 2, 3, 2)),
    "small": ((64, 128, 320, 512), (2, 4, 10, 16), (1, 3, 7, 4)),
    "medium": ((64, 128, 288, 512), (2, 4, 9, 16), (1, 3, 29, 5)),
    "large": ((64, 128, 320, 512), (2, 4, 10, 16), (1, 3, 40, 5)),
    "huge": ((64, 128, 352, 512), (2, 4, 11, 16), (1, 5, 49, 5)),
}
LANDMARK_RATIOS = (8, 4, 2)
LOCAL_KERNELS = (9, 5, 3)
#: positional tables are learned on a 224 x 224 input: 56, 28, 14 and 7 tokens a side
POS_GRIDS = (56, 28, 14, 7)


def _conv_bn_relu(in_ch, out_ch, stride):
    return [nn.Conv2d(in_ch, out_ch, 3, stride=stride, pad_mode="pad", padding=1, has_bias=True),
            nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.9), nn.ReLU()]


class PatchEmbed(nn.Cell):
    """Convolutional patch embedding [B, C, H, W] -> [B, D, H/s, W/s].

    The stem (stage 1) is three conv-BN-ReLU (strides 2, 1, 2, 32 hidden channels); later stages use
    one stride-2 conv-BN-ReLU.
    """

    def __init__(self, in_ch, out_ch, stem=False):
        super().__init__()
        if stem:
            layers = _conv_bn_relu(in_ch, 32, 2) + _conv_bn_relu(32, 32, 1) + _conv_bn_relu(32, out_ch, 2)
        else:
            layers = _conv_bn_relu(in_ch, out_ch, 2)
        self.proj = nn.SequentialCell(layers)

    def construct(self, x):
        return self.proj(x)


def bilinear_matrix(out_size, in_size):
    """[out_size, in_size] matrix M with M @ v = bilinear resize of v (half-pixel centres, align_corners
    False, no antialiasing: what ``interpolate(mode="bilinear")`` of PyTorch and MindSpore computes)."""
    mat = np.zeros((out_size, in_size), np.float32)
    scale = in_size / out_size
    for i in range(out_size):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(src), in_size - 1)
        hi = min(lo + 1, in_size - 1)
        mat[i, lo] += 1.0 - (src - lo)
        mat[i, hi] += src - lo
    return mat


def resize_pos_table(table, grid, height, width):
    """Bilinearly resize a learned [1, grid², D] table to [1, height·width, D] (half-pixel centres).

    Written as two matmuls with constant interpolation matrices (the sizes are known at compile time),
    which every exporter handles, unlike a resize operator.
    """
    if height == grid and width == grid:
        return table
    dim = table.shape[-1]
    rows = ms.Tensor(bilinear_matrix(height, grid))                          # [H, g]
    cols = ms.Tensor(bilinear_matrix(width, grid))                           # [W, g]
    by_row = ops.matmul(rows, table.reshape(grid, grid * dim))              # [H, g·D]
    by_col = by_row.reshape(height, grid, dim).transpose(1, 0, 2).reshape(grid, height * dim)
    resized = ops.matmul(cols, by_col).reshape(width, height, dim)          # [W, H, D]
    return resized.transpose(1, 0, 2).reshape(1, height * width, dim)


def _tokens(x):
    """[B, D, H, W] -> [B, H·W, D]."""
    b, d, h, w = x.shape
    return x.reshape(b, d, h * w).transpose(0, 2, 1)


def _feature_map(tokens, height, width):
    """[B, H·W, D] -> [B, D, H, W]."""
    b, _, d = tokens.shape
    return tokens.transpose(0, 2, 1).reshape(b, d, height, width)


class SoftmaxFreeVisionTransformer(nn.Cell):
    """SOFT backbone: [B, 3, H, W] -> logits [B, num_classes] (H, W multiples of 32).

    Args:
        embed_dims, num_heads, depths: per-stage widths D_i, heads h_i and depths n_i.
        num_classes: head size (0 gives no head: ``construct`` returns the pooled feature).
        mlp_ratio: hidden ratio of the stage-4 MLP (stages 1-3 always use 4D).
        qkv_bias: bias of the stage-4 q / kv projections.
        drop_rate, attn_drop_rate: dropout of the positional embedding / MLPs and of the attention.
        drop_path_rate: top of the linear drop-path ramp over all blocks.
        newton_iters: Newton steps of the pseudo-inverse.
        norm_inverse: SOFT-Norm instead of SOFT.
        landmarks: "conv" (the published model: m = N/r² landmarks, growing with the input) or "pool"
            (at most landmark_grid² landmarks per stage whatever the input size: linear cost; same
            parameters, and identical to "conv" at 224 x 224 with the default grid of 7).
        landmark_grid: the fixed landmark grid side for landmarks="pool".
        attention: "soft", or "softmax" for standard attention in stages 1-3 (a benchmark control).
    """

    def __init__(self, embed_dims, num_heads, depths, num_classes=1000, in_chans=3, mlp_ratio=4.0, qkv_bias=True,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, newton_iters=20, norm_inverse=False,
                 landmarks="conv", landmark_grid=7, attention="soft"):
        super().__init__()
        if landmarks not in ("conv", "pool"):
            raise ValueError(f"landmarks must be 'conv' or 'pool', got {landmarks!r}")
        if len(embed_dims) != 4 or len(num_heads) != 4 or len(depths) != 4:
            raise ValueError("embed_dims, num_heads and depths need one entry per stage (4)")
        self.num_classes = num_classes
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.num_features = embed_dims[3]
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        starts = [sum(depths[:i]) for i in range(4)]

        in_dims = (in_chans,) + tuple(embed_dims[:3])
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(in_dims[i], embed_dims[i], stem=i == 0))
            tokens = POS_GRIDS[i] ** 2 + (1 if i == 3 else 0)
            setattr(self, f"pos_embed{i + 1}", ms.Parameter(
                initializer(TruncatedNormal(0.02), (1, tokens, embed_dims[i]), ms.float32), name=f"pos_embed{i + 1}"))
        for i in range(3):
            setattr(self, f"block{i + 1}", nn.CellList([
                SoftBlock(embed_dims[i], num_heads[i], LANDMARK_RATIOS[i], LOCAL_KERNELS[i], rates[starts[i] + j],
                          newton_iters, norm_inverse, landmark_grid if landmarks == "pool" else None, attention)
                for j in range(depths[i])]))
        self.block4 = nn.CellList([
            Block(embed_dims[3], num_heads[3], mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[starts[3] + j])
            for j in range(depths[3])])
        self.pos_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
        self.cls_token = ms.Parameter(initializer(TruncatedNormal(0.02), (1, 1, embed_dims[3]), ms.float32),
                                      name="cls_token")
        self.norm = nn.LayerNorm((embed_dims[3],), epsilon=1e-6)
        self.head = nn.Dense(embed_dims[3], num_classes, weight_init=TruncatedNormal(0.02)) \
            if num_classes > 0 else nn.Identity()

    def no_weight_decay(self):
        """Parameter names trained without weight decay besides 1-D ones and biases (the original's: the class
        token only; the positional tables are decayed)."""
        return {"cls_token"}

    @staticmethod
    def check_input_size(height, width):
        if height % 32 or width % 32:
            raise ValueError(f"input size {height}x{width} is not supported: height and width must be "
                             "multiples of 32 (e.g. 224x224 or 256x192)")

    def _soft_stage(self, index, x):
        """Stage ``index`` (0-2): [B, C, H, W] -> [B, D_i, H/2·, W/2·]."""
        x = getattr(self, f"patch_embed{index + 1}")(x)
        height, width = x.shape[2], x.shape[3]
        table = resize_pos_table(getattr(self, f"pos_embed{index + 1}"), POS_GRIDS[index], height, width)
        tokens = self.pos_drop(_tokens(x) + table)
        for blk in getattr(self, f"block{index + 1}"):
            tokens = blk(tokens, height, width)
        return _feature_map(tokens, height, width)

    def _softmax_stage(self, x):
        """Stage 4: [B, D_3, H, W] -> tokens [B, 1 + H·W/4, D_4] (class token first), and the map size."""
        x = self.patch_embed4(x)
        height, width = x.shape[2], x.shape[3]
        tokens = _tokens(x)
        cls = ops.broadcast_to(self.cls_token, (tokens.shape[0], 1, tokens.shape[2]))
        table = self.pos_embed4
        grid_table = resize_pos_table(table[:, 1:], POS_GRIDS[3], height, width)
        tokens = ops.concat((cls + table[:, :1], tokens + grid_table), axis=1)
        tokens = self.pos_drop(tokens)
        for blk in self.block4:
            tokens = blk(tokens)
        return tokens, height, width

    def forward_stages(self, x):
        """The four stage outputs [B, D_i, H/4/2^i, W/4/2^i] (i = 0..3) for dense prediction."""
        self.check_input_size(x.shape[2], x.shape[3])
        feats = []
        for i in range(3):
            x = self._soft_stage(i, x)
            feats.append(x)
        tokens, height, width = self._softmax_stage(x)
        feats.append(_feature_map(tokens[:, 1:], height, width))
        return feats

    def forward_features(self, x):
        """Pooled feature: the final-normed class token [B, D_4]."""
        self.check_input_size(x.shape[2], x.shape[3])
        for i in range(3):
            x = self._soft_stage(i, x)
        tokens, _, _ = self._softmax_stage(x)
        return self.norm(tokens)[:, 0]

    def forward_head(self, feature):
        """[B, D_4] -> [B, num_classes]."""
        return self.head(feature)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


def _build(size, norm_inverse, num_classes=1000, **overrides):
    dims, heads, depths = VARIANTS[size]
    kwargs = dict(embed_dims=dims, num_heads=heads, depths=depths)
    kwargs.update(overrides)
    return SoftmaxFreeVisionTransformer(num_classes=num_classes, norm_inverse=norm_inverse, **kwargs)


@register_model
def soft_tiny(num_classes=1000, **overrides):
    """SOFT-Tiny, 13.1M parameters."""
    return _build("tiny", False, num_classes, **overrides)


@register_model
def soft_small(num_classes=1000, **overrides):
    """SOFT-Small, 24.1M parameters."""
    return _build("small", False, num_classes, **overrides)


@register_model
def soft_medium(num_classes=1000, **overrides):
    """SOFT-Medium, 45.8M parameters."""
    return _build("medium", False, num_classes, **overrides)


@register_model
def soft_large(num_classes=1000, **overrides):
    """SOFT-Large, 64.7M parameters."""
    return _build("large", False, num_classes, **overrides)


@register_model
def soft_huge(num_classes=1000, **overrides):
    """SOFT-Huge, 87.1M parameters."""
    return _build("huge", False, num_classes, **overrides)


@register_model
def soft_norm_tiny(num_classes=1000, **overrides):
    """SOFT-Norm-Tiny (same parameters as SOFT-Tiny)."""
    return _build("tiny", True, num_classes, **overrides)


@register_model
def soft_norm_small(num_classes=1000, **overrides):
    """SOFT-Norm-Small."""
    return _build("small", True, num_classes, **overrides)


@register_model
def soft_norm_medium(num_classes=1000, **overrides):
    """SOFT-Norm-Medium."""
    return _build("medium", True, num_classes, **overrides)


@register_model
def soft_norm_large(num_classes=1000, **overrides):
    """SOFT-Norm-Large."""
    return _build("large", True, num_classes, **overrides)


@register_model
def soft_norm_huge(num_classes=1000, **overrides):
    """SOFT-Norm-Huge."""
    return _build("huge", True, num_classes, **overrides)


@register_model
def bench_soft_tiny_softmax(num_classes=1000, **overrides):
    """Benchmark control: soft_tiny's widths and depths with softmax attention in stages 1-3 (quadratic)."""
    return _build("tiny", False, num_classes, attention="softmax", **overrides)


# ----------------------------------------------------------------------------------------------------
# PyTorch checkpoint import (the converter map; used by src/torch_checkpoint.py)

#: our parameter path -> the reference's, for the SOFT blocks of stages 1-3 (the reference nests them
#: under ``att`` / ``mha`` and names the projections W_q / W_v / ff)
_SOFT_BLOCK_RENAMES = (
    (r"\.attn\.q\.", ".att.mha.W_q."),
    (r"\.attn\.v\.", ".att.mha.W_v."),
    (r"\.attn\.proj\.", ".att.mha.ff."),
    (r"\.attn\.kernel\.landmark\.", ".att.mha.attn.Qlandmark_op."),
    (r"\.attn\.kernel\.landmark_norm\.", ".att.mha.attn.Qnorm_act.0."),
    (r"\.attn\.local_conv\.", ".att.mha.attn.conv."),
    (r"\.fc1\.", ".att.ff1."),
    (r"\.fc2\.", ".att.ff2."),
    (r"\.(norm[12])\.", r".att.\1."),
)


def torch_param_names(net):
    """Our parameter name -> the reference PyTorch state-dict name, for every parameter of ``net``."""

    names = {}
    for ours, theirs in norm_layer_torch_names(net).items():
        if re.match(r"block[123]\.", theirs):
            for pattern, repl in _SOFT_BLOCK_RENAMES:
                theirs, count = re.subn(pattern, repl, theirs)
                if count:
                    break
        names[ours] = theirs
    return names


def variant_overrides_from_torch(state, arch):
    """Constructor overrides that make ``arch`` fit a reference state dict ``state`` ({name: array}).

    Stage depths are counted from the ``block{i}.{j}.`` keys (the published soft_small has 20 stage-3
    blocks, our table 7); ``num_classes`` is the row count of ``head.weight``.
    """
    size = arch.rsplit("_", 1)[-1]
    depths = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for m in (re.match(rf"block{stage}\.(\d+)\.", k) for k in state) if m}
        depths.append(max(indices) + 1 if indices else 0)
    overrides = {}
    if all(depths) and tuple(depths) != VARIANTS[size][2]:
        overrides["depths"] = tuple(depths)
    if "head.weight" in state:
        overrides["num_classes"] = int(state["head.weight"].shape[0])
    return overrides


# ----------------------------------------------------------------------------------------------------
# Import from the original MindSpore port (fudan-zvg/SOFT_MindSpore_Ascend; used by src/torch_checkpoint.py)

#: our patch-embedding layer -> the port's: the stem's conv-BN-ReLU triples (proj.0/1, 3/4, 6/7) are its
#: conv1/norm1 .. conv3/norm3, the later stages' proj.0/1 its conv/norm
_PORT_EMBED_LAYERS = {("1", "0"): "conv1", ("1", "1"): "norm1", ("1", "3"): "conv2", ("1", "4"): "norm2",
                      ("1", "6"): "conv3", ("1", "7"): "norm3", ("234", "0"): "conv", ("234", "1"): "norm"}
#: our stage-4 block paths -> the port's residual SequentialCells
_PORT_BLOCK4_RENAMES = (
    (r"^(block4\.\d+)\.norm1\.", r"\1.layers.0.cell.0."),
    (r"^(block4\.\d+)\.attn\.", r"\1.layers.0.cell.1."),
    (r"^(block4\.\d+)\.norm2\.", r"\1.layers.1.cell.0."),
    (r"^(block4\.\d+)\.mlp\.fc([12])\.", r"\1.layers.1.cell.1.ff\2."),
)
#: the port's entries that no forward pass reads: every PatchEmbed builds both the 3-conv stem and the one-conv
#: embedding and runs one of them (stage 1 the stem, stages 2-4 the single conv)
PORT_UNUSED = re.compile(r"^(patch_embed1\.(conv|norm)\.|patch_embed[234]\.(conv|norm)[123]\.)")
#: the class token's name: ``cls`` in checkpoints of MindSpore 1.x (the port's ``name='cls'``), ``cls_token`` on 2.x
PORT_CLASS_TOKEN = ("cls", "cls_token")


def _port_name(ours):
    """The port's name of our parameter ``ours``, or None for a convolution bias (the port has none)."""
    embed = re.match(r"^patch_embed(\d)\.proj\.(\d)\.(\w+)$", ours)
    if embed:
        stage, index, leaf = embed.groups()
        layer = next(v for (stages, i), v in _PORT_EMBED_LAYERS.items() if stage in stages and i == index)
        return None if layer.startswith("conv") and leaf == "bias" else f"patch_embed{stage}.{layer}.{leaf}"
    for pattern, repl in (_SOFT_BLOCK_RENAMES if re.match(r"block[123]\.", ours) else _PORT_BLOCK4_RENAMES):
        theirs, count = re.subn(pattern, repl, ours)
        if count:
            return theirs
    return ours


def port_param_names(net):
    """Our parameter name -> the original MindSpore port's checkpoint names, for every parameter of ``net``.

    A value is a tuple of accepted names (the first one present is used), or ``()`` where the port has no such
    parameter: its patch-embedding convolutions have no bias, which is a zero bias here.
    """
    names = {}
    for ours, _ in net.parameters_and_names():
        theirs = PORT_CLASS_TOKEN if ours == "cls_token" else _port_name(ours)
        names[ours] = theirs if isinstance(theirs, tuple) else (() if theirs is None else (theirs,))
    return names
