"""SwiftFormer backbones (Shaker et al., "SwiftFormer: Efficient Additive Attention for Transformer-based
Real-time Mobile Vision Applications", ICCV 2023) for MindSpore.

Input [B, 3, H, W] with H and W multiples of 32. A two-conv stem brings the image to H/4 x W/4, then four
stages follow, stage i (0-based) working on an H/4/2^i x W/4/2^i map with C_i channels. Each stage is
(depth_i - 1) ``ConvEncoder`` blocks and one ``SwiftFormerEncoder`` (local representation, efficient
additive attention, MLP); stages are joined by stride-2 conv + BN ``Embedding`` layers. The head is
BN -> global average pool -> ``head`` (plus the distillation ``dist_head``).

Module and parameter paths are the reference PyTorch code's (``patch_embed.0.weight``,
``network.0.2.attn.to_query.weight``, ...), so importing its checkpoints only renames the BatchNorm
parameters (see ``torch_param_names``).

Each block's ``construct`` is the paper's formula in plain MindSpore operators; training and plain evaluation
run it, on every device. For inference ``models.fuse_for_inference(net)`` calls every block's
``reparameterize()`` once: BatchNorm is folded into the convolution next to it, the attention is evaluated
channels-first in a re-associated order (``AdditiveAttentionInference``), and the head pools before its (then
affine) BatchNorm. The fused network gives the same outputs (<= 1e-6 relative). On CPU the speed layer
``models.cpu`` rewrites both forms (fused kernels, faster gradients); nothing here depends on it.

    >>> from models import create_model, fuse_for_inference
    >>> net = create_model("SwiftFormer_XS")            # 3,475,360 parameters
    >>> net.set_train(False); logits = net(x)            # x [B, 3, 224, 224] -> [B, 1000]
    >>> fuse_for_inference(net); logits = net(x)         # the same logits, faster
"""
import re

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal, initializer

from .checkpoint import norm_layer_torch_names
from .layers import DropPath
from .registry import register_model

__all__ = ["SwiftFormer", "EfficientAdditiveAttention", "L2Normalize", "ChannelLinear", "SwiftFormerEncoder",
           "ConvEncoder", "ConvMlp", "Embedding", "Stem", "ScaledResidual", "AdditiveAttentionInference", "VARIANTS",
           "torch_param_names", "variant_overrides_from_torch"]

#: variant name -> (widths C_i, depths n_i); SPEC section 5
VARIANTS = {
    "SwiftFormer_XS": ((48, 56, 112, 220), (3, 3, 6, 4)),
    "SwiftFormer_S": ((48, 64, 168, 224), (3, 3, 9, 6)),
    "SwiftFormer_L1": ((48, 96, 192, 384), (4, 3, 10, 5)),
    "SwiftFormer_L3": ((64, 128, 320, 512), (4, 4, 12, 6)),
}

#: the total stride of the network; input sides must be multiples of it
_STRIDE = 32
_BN_EPS = 1e-5
_L2_EPS = 1e-12


def _conv(in_ch, out_ch, kernel, stride=1, group=1):
    """Conv2d with the reference's padding (k // 2), bias, and truncated-normal(0.02) weights."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=kernel // 2,
                     group=group, has_bias=True, weight_init=TruncatedNormal(0.02), bias_init="zeros")


def _bn(ch):
    """BatchNorm2d, eps 1e-5, PyTorch momentum 0.1 (MindSpore 0.9)."""
    return nn.BatchNorm2d(ch, eps=_BN_EPS, momentum=0.9)


def _dense(in_ch, out_ch):
    return nn.Dense(in_ch, out_ch, weight_init=TruncatedNormal(0.02), bias_init="zeros")


def _channel_linear(in_ch, out_ch):
    return ChannelLinear(in_ch, out_ch, weight_init=TruncatedNormal(0.02), bias_init="zeros")


def _layer_scale(ch, value):
    """A per-channel layer scale [C, 1, 1] filled with ``value``."""
    return ms.Parameter(ms.Tensor(np.full((ch, 1, 1), value, np.float32)))


class L2Normalize(nn.Cell):
    """x / max(|x|_2, 1e-12) along ``axis`` (PyTorch's F.normalize), written as x / sqrt(max(Σx², 1e-24)) (the
    same values, and autodiff then gives F.normalize's gradient everywhere, a zero vector included), computed in
    float32 whatever the input dtype (under mixed precision the sum of squares would overflow float16, and its
    1e-24 floor underflow it). x [B, C, H, W]; ``axis`` 1 (channels) or (2, 3) (the H x W pixels)."""

    def __init__(self, axis):
        super().__init__()
        if axis not in (1, (2, 3)):
            raise ValueError(f"L2Normalize axis must be 1 or (2, 3), got {axis!r}")
        self.axis = axis
        self.over_channels = axis == 1

    def construct(self, x):
        values = ops.cast(x, ms.float32)
        squares = ops.sum(values * values, self.axis, keepdim=True)
        return ops.cast(values / ops.sqrt(ops.maximum(squares, _L2_EPS * _L2_EPS)), x.dtype)


class ChannelLinear(nn.Dense):
    """``nn.Dense`` (the same ``weight`` [out, in] and ``bias`` [out]) applied to the channels of every pixel of
    a channels-first map: x [B, C_in, H, W] -> [B, C_out, H, W], i.e. the Linear layer of the reference on the
    tokens [B, H·W, C_in], computed as a 1x1 convolution with its weight so that the map is never transposed."""

    def construct(self, x):
        out = ops.conv2d(x, self.weight.reshape(self.out_channels, self.in_channels, 1, 1))
        return self.bias_add(out, self.bias) if self.has_bias else out


class ScaledResidual(nn.Cell):
    """(x, scale, branch) -> x + drop_path(scale * branch); x, branch [B, C, H, W], scale [C, 1, 1]."""

    def __init__(self, drop_path=0.0):
        super().__init__()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def construct(self, x, scale, branch):
        return x + self.drop_path(scale * branch)


# ----------------------------------------------------------------------------------------------------
# The blocks (training and plain evaluation)

class Stem(nn.SequentialCell):
    """[B, 3, H, W] -> [B, C, H/4, W/4]: Conv3x3(s2) -> BN -> ReLU -> Conv3x3(s2) -> BN -> ReLU.

    A SequentialCell so that the parameter paths are the reference's (``patch_embed.0.weight``, ...).
    """

    def __init__(self, in_ch, out_ch):
        super().__init__([_conv(in_ch, out_ch // 2, 3, stride=2), _bn(out_ch // 2), nn.ReLU(),
                          _conv(out_ch // 2, out_ch, 3, stride=2), _bn(out_ch), nn.ReLU()])

    def reparameterize(self):
        """Fold each BN into its convolution: [Conv, BiasActivation(relu)] x 2."""
        if not isinstance(self[1], nn.BatchNorm2d):
            return
        fused = []
        for conv, bn in ((self[0], self[1]), (self[3], self[4])):
            weight, bias = _fold_bn_after(conv, bn)
            fused += [Conv(weight, stride=2, padding=1), BiasActivation(bias, "relu")]
        del self[:]
        for cell in fused:
            self.append(cell)


class Embedding(nn.Cell):
    """Downsampling between stages: Conv3x3(stride 2, pad 1) -> BN, [B, C_in, H, W] -> [B, C_out, H/2, W/2]."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.proj = _conv(in_ch, out_ch, 3, stride=2)
        self.norm = _bn(out_ch)

    def construct(self, x):
        return self.norm(self.proj(x))

    def reparameterize(self):
        """Fold the BN into the convolution."""
        if isinstance(self.norm, nn.BatchNorm2d):
            weight, bias = _fold_bn_after(self.proj, self.norm)
            self.proj = Conv(weight, bias, stride=2, padding=1)
            self.norm = nn.Identity()


class ConvEncoder(nn.Cell):
    """x + drop_path(layer_scale * pwconv2(GELU(pwconv1(BN(dwconv3x3(x)))))) on [B, C, H, W] -> [B, C, H, W].

    Also the ``local_representation`` of a ``SwiftFormerEncoder`` (hidden = C there).

    Args:
        dim: C.
        hidden: width of the point-wise expansion (4C in ConvEncoder blocks).
        drop_path: stochastic-depth rate of the residual branch (the reference uses 0 everywhere).
    """

    def __init__(self, dim, hidden, drop_path=0.0):
        super().__init__()
        self.dwconv = _conv(dim, dim, 3, group=dim)
        self.norm = _bn(dim)
        self.pwconv1 = _conv(dim, hidden, 1)
        self.act = nn.GELU(approximate=False)
        self.pwconv2 = _conv(hidden, dim, 1)
        self.residual = ScaledResidual(drop_path)  # x + drop_path(layer_scale * branch)
        self.layer_scale = _layer_scale(dim, 1.0)
        self.inference = None  # set by reparameterize()

    def construct(self, x):
        if self.inference is not None:
            return self.inference(x)
        return self.residual(x, self.layer_scale, self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x))))))

    def reparameterize(self):
        """Replace the block by ``ConvEncoderInference`` (BN folded into pwconv1)."""
        if self.inference is None:
            self.inference = ConvEncoderInference(self)
            for name in ("dwconv", "norm", "pwconv1", "act", "pwconv2", "residual", "layer_scale"):
                delattr(self, name)


class ConvMlp(nn.Cell):
    """The encoder's MLP on [B, C, H, W] -> [B, C, H, W]: BN -> Conv1x1(C, hidden) -> GELU -> Conv1x1(hidden, C)."""

    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.norm1 = _bn(dim)
        self.fc1 = _conv(dim, hidden, 1)
        self.act = nn.GELU(approximate=False)
        self.fc2 = _conv(hidden, dim, 1)
        self.drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()

    def construct(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.norm1(x))))))


class EfficientAdditiveAttention(nn.Cell):
    """Efficient additive attention (one head) on the tokens of a channels-first map x [B, C, H, W] -> [B, C, H, W]
    (token n = pixel n, N = H*W; the Linear layers act on the channels of each token):

        q = l2n(W_q x + b_q), k = l2n(W_k x + b_k)   (l2n: unit L2 norm over the channels of each token)
        a = l2n_N(w_g . q C^-0.5)                      [B, 1, H, W], unit L2 norm over the N tokens
        g = sum_n a_n q_n                              [B, C, 1, 1], the global query
        out = final(Proj(g * k) + q)

    Args:
        dim: C (query / key / token width are all C, as in every released variant).
    """

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.to_query = _channel_linear(dim, dim)
        self.to_key = _channel_linear(dim, dim)
        self.w_g = ms.Parameter(initializer(Normal(1.0), (dim, 1), ms.float32))
        self.scale_factor = dim ** -0.5
        self.Proj = _channel_linear(dim, dim)  # pylint: disable=invalid-name  (the reference's name)
        self.final = _channel_linear(dim, dim)
        self.normalize_channels = L2Normalize(1)
        self.normalize_tokens = L2Normalize((2, 3))

    def construct(self, x):
        query, weights = self._query_and_token_weights(x)
        key = self.normalize_channels(self.to_key(x))
        b, c, h, w = query.shape
        global_query = ops.bmm(query.reshape(b, c, h * w), weights.reshape(b, h * w, 1)).reshape(b, c, 1, 1)
        return self.final(self.Proj(global_query * key) + query)

    def _query_and_token_weights(self, x):
        """q [B, C, H, W] and a [B, 1, H, W] of the map x [B, C, H, W]."""
        query = self.normalize_channels(self.to_query(x))
        w_g_dot_q = ops.conv2d(query, self.w_g.reshape(1, self.dim, 1, 1))             # w_g . q_n per token
        return query, self.normalize_tokens(w_g_dot_q * self.scale_factor)

    def token_weights(self, x):
        """The normalised token weights a of the map x [B, C, H, W]: [B, H*W] (sum of squares over H*W is 1)."""
        return self._query_and_token_weights(x)[1].reshape(x.shape[0], -1)


class SwiftFormerEncoder(nn.Cell):
    """Last block of a stage, [B, C, H, W] -> [B, C, H, W]:

        x = local_representation(x)
        x = x + drop_path(layer_scale_1 * attn(x))         (attention over the H*W tokens of x)
        x = x + drop_path(layer_scale_2 * linear(x))

    Args:
        dim: C.
        mlp_ratio: MLP hidden width / C.
        drop: dropout inside the MLP.
        drop_path: stochastic-depth rate of the attention and MLP branches.
        layer_scale_init_value: initial value of ``layer_scale_1`` / ``layer_scale_2``.
    """

    def __init__(self, dim, mlp_ratio=4.0, drop=0.0, drop_path=0.0, layer_scale_init_value=1e-5):
        super().__init__()
        self.local_representation = ConvEncoder(dim, dim)
        self.attn = EfficientAdditiveAttention(dim)
        self.linear = ConvMlp(dim, int(dim * mlp_ratio), drop=drop)
        self.attn_residual = ScaledResidual(drop_path)  # x + drop_path(layer_scale_1 * attn(x))
        self.mlp_residual = ScaledResidual(drop_path)  # x + drop_path(layer_scale_2 * linear(x))
        self.layer_scale_1 = _layer_scale(dim, layer_scale_init_value)
        self.layer_scale_2 = _layer_scale(dim, layer_scale_init_value)
        self.inference = None  # set by reparameterize()

    def construct(self, x):
        if self.inference is not None:
            return self.inference(x)
        x = self.local_representation(x)
        x = self.attn_residual(x, self.layer_scale_1, self.attn(x))
        return self.mlp_residual(x, self.layer_scale_2, self.linear(x))

    def reparameterize(self):
        """Replace the block by ``SwiftFormerEncoderInference`` (its local representation is fused first)."""
        if self.inference is None:
            self.inference = SwiftFormerEncoderInference(self)
            for name in ("local_representation", "attn", "linear", "attn_residual", "mlp_residual", "layer_scale_1",
                         "layer_scale_2"):
                delattr(self, name)


class GlobalAvgPool(nn.Cell):
    """[B, C, H, W] -> [B, C], the mean over H and W."""

    def construct(self, x):
        return x.mean(axis=(2, 3))


class SwiftFormer(nn.Cell):
    """SwiftFormer classifier / backbone.

    Args:
        embed_dims: widths C_1..C_4.
        depths: blocks per stage n_1..n_4 (n_i - 1 ConvEncoders, then one SwiftFormerEncoder).
        num_classes: head size; 0 gives no head (the network returns pooled features [B, C_4]).
        distillation: also build ``dist_head`` (training returns (head, dist) logits, evaluation their
            mean); False gives a single head.
        mlp_ratio: hidden width / C of the ConvEncoder expansions and MLPs.
        drop_rate: dropout inside the MLPs.
        drop_path_rate: stochastic depth, ramped linearly over all blocks; as in the reference, only the
            SwiftFormerEncoder blocks use it.
        layer_scale_init_value: initial layer scale of the attention and MLP branches.
        in_chans: input channels.

    Input [B, in_chans, H, W], H and W multiples of 32 (ValueError otherwise). Output: evaluation mode
    [B, num_classes]; training mode with distillation a tuple of two [B, num_classes].
    """

    def __init__(self, embed_dims, depths, num_classes=1000, distillation=True, mlp_ratio=4.0, drop_rate=0.0,
                 drop_path_rate=0.0, layer_scale_init_value=1e-5, in_chans=3):
        super().__init__()
        embed_dims, depths = tuple(int(d) for d in embed_dims), tuple(int(n) for n in depths)
        if len(embed_dims) != len(depths) or min(depths) < 1:
            raise ValueError(f"embed_dims {embed_dims} and depths {depths} must have the same length, "
                             "with at least one block per stage.")
        self.embed_dims, self.depths = embed_dims, depths
        self.num_classes = int(num_classes)
        self.num_features = embed_dims[-1]
        self.distillation = bool(distillation) and self.num_classes > 0
        self.patch_embed = Stem(in_chans, embed_dims[0])

        total = sum(depths)
        layers = []
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            blocks = [ConvEncoder(dim, int(dim * mlp_ratio)) for _ in range(depth - 1)]
            dpr = drop_path_rate * (sum(depths[:i]) + depth - 1) / max(total - 1, 1)
            blocks.append(SwiftFormerEncoder(dim, mlp_ratio, drop=drop_rate, drop_path=dpr,
                                             layer_scale_init_value=layer_scale_init_value))
            layers.append(nn.SequentialCell(blocks))
            if i + 1 < len(embed_dims):
                layers.append(Embedding(dim, embed_dims[i + 1]))
        self.network = nn.CellList(layers)

        self.norm = _bn(self.num_features)
        self.pool = GlobalAvgPool()
        if self.num_classes > 0:
            self.head = _dense(self.num_features, self.num_classes)
            if self.distillation:
                self.dist_head = _dense(self.num_features, self.num_classes)
        else:
            self.head = nn.Identity()

    def no_weight_decay(self):
        """Parameter names to keep out of weight decay: none (the reference decays its layer scales too)."""
        return set()

    def _check_size(self, x):
        h, w = x.shape[-2], x.shape[-1]
        if h % _STRIDE != 0 or w % _STRIDE != 0:
            raise ValueError(f"SwiftFormer input height and width must be multiples of {_STRIDE}, got {h}x{w}; "
                             f"resize or pad the image to a multiple of {_STRIDE}.")

    def __call__(self, *args, **kwargs):
        # check before compiling, so that a bad size gives one clear sentence rather than a graph traceback
        if args and isinstance(getattr(args[0], "shape", None), (tuple, list)) and len(args[0].shape) == 4:
            h, w = args[0].shape[-2:]
            if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
                self._check_size(args[0])
        return super().__call__(*args, **kwargs)

    def forward_stages(self, x):
        """The four stage outputs for dense prediction: x [B, 3, H, W] -> list of [B, C_i, H/4/2^i, W/4/2^i]."""
        self._check_size(x)
        x = self.patch_embed(x)
        outs = []
        idx = 0
        for layer in self.network:
            x = layer(x)
            if idx % 2 == 0:
                outs.append(x)
            idx += 1
        return outs

    def forward_features(self, x):
        """Pooled feature: x [B, 3, H, W] -> [B, C_4] (final BN, then global average pool)."""
        self._check_size(x)
        x = self.patch_embed(x)
        for layer in self.network:
            x = layer(x)
        return self.pool(self.norm(x))

    def construct(self, x):
        """x [B, 3, H, W] -> logits [B, num_classes] (training with distillation: (head, dist_head))."""
        feat = self.forward_features(x)
        if self.distillation:
            logits = self.head(feat)
            dist = self.dist_head(feat)
            if self.training:
                return logits, dist
            return (logits + dist) / 2
        return self.head(feat)

    def reparameterize(self):
        """The head's evaluation BN is a per-channel affine map, so it commutes with the mean: pool first."""
        if isinstance(self.norm, nn.BatchNorm2d):
            scale, shift = _bn_affine(self.norm)
            self.norm = nn.Identity()
            self.pool = PoolThenAffine(scale, shift)


def _build(name, num_classes, **overrides):
    embed_dims, depths = VARIANTS[name]
    kwargs = {"embed_dims": embed_dims, "depths": depths}
    kwargs.update(overrides)
    return SwiftFormer(num_classes=num_classes, **kwargs)


@register_model
def SwiftFormer_XS(num_classes=1000, **overrides):  # pylint: disable=invalid-name
    """SwiftFormer-XS, 3,475,360 parameters (ImageNet top-1 75.7, distilled)."""
    return _build("SwiftFormer_XS", num_classes, **overrides)


@register_model
def SwiftFormer_S(num_classes=1000, **overrides):  # pylint: disable=invalid-name
    """SwiftFormer-S, 6,092,128 parameters (ImageNet top-1 78.5, distilled)."""
    return _build("SwiftFormer_S", num_classes, **overrides)


@register_model
def SwiftFormer_L1(num_classes=1000, **overrides):  # pylint: disable=invalid-name
    """SwiftFormer-L1, 12,057,920 parameters (ImageNet top-1 80.9, distilled)."""
    return _build("SwiftFormer_L1", num_classes, **overrides)


@register_model
def SwiftFormer_L3(num_classes=1000, **overrides):  # pylint: disable=invalid-name
    """SwiftFormer-L3, 28,494,736 parameters (ImageNet top-1 83.0, distilled)."""
    return _build("SwiftFormer_L3", num_classes, **overrides)


# ----------------------------------------------------------------------------------------------------
# Inference forms, built once by the blocks' reparameterize() (models.fuse_for_inference). Weights are
# folded in float64 and stored as float32 constants.

def _np(param):
    return param.asnumpy().astype(np.float64)


def _bn_affine(bn):
    """Evaluation-mode BatchNorm as y = scale * x + shift: (scale, shift), float64 [C]."""
    scale = _np(bn.gamma) / np.sqrt(_np(bn.moving_variance) + bn.eps)
    return scale, _np(bn.beta) - _np(bn.moving_mean) * scale


def _fold_bn_after(conv, bn):
    """bn(conv(x)) as one convolution: (weight [C_out, C_in/g, k, k], bias [C_out]), float64."""
    scale, shift = _bn_affine(bn)
    return _np(conv.weight) * scale.reshape(-1, 1, 1, 1), _np(conv.bias) * scale + shift


def _fold_bn_before_pointwise(conv, scale, shift):
    """conv1x1(scale * x + shift) as one 1x1 convolution: (weight, bias), float64."""
    weight = _np(conv.weight)
    return weight * scale.reshape(1, -1, 1, 1), _np(conv.bias) + weight[:, :, 0, 0] @ shift


def _const(array):
    return ms.Tensor(np.asarray(array, np.float32))


class Conv(nn.Cell):
    """Inference convolution with fixed weights: x [B, C_in, H, W] -> conv(x, weight) (+ bias [C_out])."""

    def __init__(self, weight, bias=None, stride=1, padding=0, group=1):
        super().__init__()
        out_ch, _, kh, kw = weight.shape
        self.stride, self.padding, self.group = stride, padding, group
        self.weight = _const(weight)
        self.bias = None if bias is None else _const(bias)
        self.conv2d = ops.Conv2D(out_ch, (kh, kw), pad_mode="pad", pad=padding, stride=stride, group=group)

    def construct(self, x):
        y = self.conv2d(x, self.weight)
        if self.bias is None:
            return y
        return ops.bias_add(y, self.bias)


class BiasActivation(nn.Cell):
    """act(x + bias[c]) for x [B, C, ...], act "relu" or "gelu" (exact)."""

    def __init__(self, bias, activation):
        super().__init__()
        self.activation = activation
        self.bias = _const(np.reshape(bias, (-1, 1, 1)))  # [C, 1, 1]: a lone BiasAdd exports to ONNX wrongly
        self.act = nn.ReLU() if activation == "relu" else nn.GELU(approximate=False)

    def construct(self, x):
        return self.act(x + self.bias)


class LayerScaleResidual(nn.Cell):
    """(x, z) -> x + scale * (z + bias), x and z [B, C, H, W], scale [C, 1, 1], bias [C] (fixed)."""

    def __init__(self, scale, bias):
        super().__init__()
        self.scale = _const(scale)
        self.bias = _const(np.reshape(bias, (-1, 1, 1)))

    def construct(self, x, z):
        return x + self.scale * (z + self.bias)


class PoolThenAffine(nn.Cell):
    """[B, C, H, W] -> scale * mean_HW(x) + shift, [B, C]: the head's evaluation BN after the pool."""

    def __init__(self, scale, shift):
        super().__init__()
        self.scale = _const(scale)
        self.shift = _const(shift)

    def construct(self, x):
        return x.mean(axis=(2, 3)) * self.scale + self.shift


class ConvEncoderInference(nn.Cell):
    """A ``ConvEncoder`` with its BN folded into pwconv1 (BN(dw(x) + b_dw) = s * dw(x) + s * b_dw + t):

        x + layer_scale * (W_2 GELU(W_1 diag(s) dw(x) + b_1') + b_2),   b_1' = b_1 + W_1 (s * b_dw + t)
    """

    def __init__(self, block):
        super().__init__()
        dim = block.dwconv.weight.shape[0]
        scale, shift = _bn_affine(block.norm)
        w1, b1 = _fold_bn_before_pointwise(block.pwconv1, scale, scale * _np(block.dwconv.bias) + shift)
        self.dwconv = Conv(_np(block.dwconv.weight), padding=1, group=dim)
        self.pwconv1 = Conv(w1)
        self.act = BiasActivation(b1, "gelu")
        self.pwconv2 = Conv(_np(block.pwconv2.weight))
        self.residual = LayerScaleResidual(_np(block.layer_scale), _np(block.pwconv2.bias))

    def construct(self, x):
        return self.residual(x, self.pwconv2(self.act(self.pwconv1(self.dwconv(x)))))


class AdditiveAttentionInference(nn.Cell):
    """``EfficientAdditiveAttention`` on the channels-first map, re-associated: x [B, C, H, W] -> z [B, C, H, W]
    with attention(x) = z + ``bias`` (the bias is left to the caller's residual).

    With tokens t = x viewed as [B, C, N] (N = H*W, a free reshape) and the Linear layers applied as W @ t:
    * [k; q] [B, 2C, N] from one 1x1 convolution with the stacked weights [W_k; W_q], then both channel
      norms from one more (``pair_sum``);
    * q . w_g = (w_g^T W_q) t + w_g . b_q, one weight row applied to x instead of a pass over q;
    * final(Proj(g * k) + q) = [W_f W_p diag(g) | W_f] @ [k; q] + (W_f b_p + b_f): one batched matmul
      (the C x 2C matrix per sample is cheap to form).
    """

    def __init__(self, attn):
        super().__init__()
        dim = attn.dim
        w_q, b_q = _np(attn.to_query.weight), _np(attn.to_query.bias)
        w_k, b_k = _np(attn.to_key.weight), _np(attn.to_key.bias)
        w_p, b_p = _np(attn.Proj.weight), _np(attn.Proj.bias)
        w_f, b_f = _np(attn.final.weight), _np(attn.final.bias)
        w_g = _np(attn.w_g)[:, 0] * attn.scale_factor
        self.dim = dim
        self.key_query_weight = _const(np.concatenate([w_k, w_q]).reshape(2 * dim, dim, 1, 1))
        self.key_query_bias = _const(np.concatenate([b_k, b_q]).reshape(-1, 1, 1))
        self.query_row = _const((w_g @ w_q).reshape(1, dim, 1, 1))
        self.query_row_bias = _const(np.reshape(w_g @ b_q, (1, 1, 1)))
        self.global_query_weight = _const(w_g)  # w_g C^-0.5 [C]: a = global_query_weight . q_n
        self.output_weight = _const(np.concatenate([w_f @ w_p, w_f], axis=1))  # [C, 2C]
        self.bias = w_f @ b_p + b_f  # float64 [C], for the caller's residual
        pair_sum = np.zeros((2, 2 * dim, 1, 1), np.float32)  # rows 0 / 1 sum the k / q halves
        pair_sum[0, :dim] = 1.0
        pair_sum[1, dim:] = 1.0
        self.pair_sum = ms.Tensor(pair_sum)

    def _keys_queries(self, x):
        """x [B, C, H, W] -> ([k; q] [B, 2C, N], unit-norm tokens; a [B, 1, N] before its norm over N)."""
        b, c, h, w = x.shape
        n = h * w
        kq = ops.conv2d(x, self.key_query_weight) + self.key_query_bias
        squares = ops.conv2d(kq * kq, self.pair_sum).reshape(b, 2, 1, n)
        inv_norm = ops.div(1.0, ops.maximum(ops.sqrt(squares), _L2_EPS))  # ops.div: not an ONNX Reciprocal
        kq = (kq.reshape(b, 2, c, n) * inv_norm).reshape(b, 2 * c, n)
        a = ops.conv2d(x, self.query_row) + self.query_row_bias
        return kq, a.reshape(b, 1, n) * inv_norm[:, 1].reshape(b, 1, n)

    def construct(self, x):
        b, c, h, w = x.shape
        kq, a = self._keys_queries(x)
        a = a / ops.maximum(ops.sqrt((a * a).sum(axis=2, keepdims=True)), _L2_EPS)
        g = ops.matmul(kq, a.swapaxes(1, 2))[:, c:]  # [B, C, 1] = sum_n a_n q_n
        mixed = self.output_weight * ops.concat((g, ops.ones_like(g)), axis=1).swapaxes(1, 2)  # [B, C, 2C]
        return ops.matmul(mixed, kq).reshape(b, c, h, w)


class SwiftFormerEncoderInference(nn.Cell):
    """A ``SwiftFormerEncoder`` with the channels-first attention and the MLP's BN folded into fc1:

        x = local_representation(x); x = x + ls1 * (z_attn + b_attn); x = x + ls2 * (W_2 GELU(fc1'(x)) + b_2)
    """

    def __init__(self, block):
        super().__init__()
        mlp = block.linear
        self.local_representation = block.local_representation  # already reparameterized (children first)
        self.attn = AdditiveAttentionInference(block.attn)
        self.attn_residual = LayerScaleResidual(_np(block.layer_scale_1), self.attn.bias)
        w1, b1 = _fold_bn_before_pointwise(mlp.fc1, *_bn_affine(mlp.norm1))
        self.fc1 = Conv(w1)
        self.act = BiasActivation(b1, "gelu")
        self.fc2 = Conv(_np(mlp.fc2.weight))
        self.mlp_residual = LayerScaleResidual(_np(block.layer_scale_2), _np(mlp.fc2.bias))

    def construct(self, x):
        x = self.local_representation(x)
        x = self.attn_residual(x, self.attn(x))
        return self.mlp_residual(x, self.fc2(self.act(self.fc1(x))))


# ----------------------------------------------------------------------------------------------------
# PyTorch checkpoint import (used by src/torch_checkpoint.py)

def torch_param_names(net):
    """Our parameter name -> the reference state-dict name, for every parameter of ``net``.

    The module paths are the reference's, so only the BatchNorm parameters are renamed
    (gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var).
    """
    return norm_layer_torch_names(net)


_BLOCK_KEY = re.compile(r"^network\.(\d+)\.(\d+)\.")


def variant_overrides_from_torch(state, arch):
    """Constructor overrides that make ``arch`` fit a reference checkpoint.

    Args:
        state: the reference state dict ``{name: array}`` (or just its keys; then ``num_classes`` cannot
            be read and is left out).
        arch: the registered variant name.

    Returns a dict with ``num_classes`` (rows of ``head.weight``), ``distillation=False`` when the
    checkpoint has no ``dist_head.*`` (the released weights without a distillation head), and ``depths``
    when the blocks per stage (counted from ``network.{2i}.{j}.``) differ from the variant table.
    """
    keys = list(state)
    overrides = {}
    if hasattr(state, "get"):
        head = state.get("head.weight")
        overrides["num_classes"] = 0 if head is None else int(head.shape[0])
    if not any(k.startswith("dist_head.") for k in keys):
        overrides["distillation"] = False
    blocks = {}
    for key in keys:
        m = _BLOCK_KEY.match(key)
        if m and int(m.group(1)) % 2 == 0:  # even network indices are stages, odd ones embeddings
            stage = int(m.group(1)) // 2
            blocks[stage] = max(blocks.get(stage, 0), int(m.group(2)) + 1)
    if blocks:
        depths = tuple(blocks.get(i, 0) for i in range(max(blocks) + 1))
        if all(depths) and depths != VARIANTS[arch][1]:
            overrides["depths"] = depths
    return overrides
