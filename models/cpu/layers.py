"""CPU versions of MindSpore's own layers, and the rules that put them into a network.

* ``nn.Dense`` / ``nn.Conv2d`` with a bias: the bias is added by ``BiasAdd``, whose float32 gradient is a
  matmul against ones (MindSpore's CPU BiasAddGrad is 3-14x slower: 25 ms against 1.8 ms for the
  25,088 x 256 rows of a transformer stage, 7% of a SOFT training step).
* ``nn.LayerNorm``: ``LayerNorm``, the backward written out (the SOFT layer-norm kernel when built, else
  element-wise operators with matmul sums); MindSpore's CPU LayerNormGrad is the slowest kernel of a SOFT step.
* ``nn.GELU(approximate=True)``: ``TanhGELU``, the formula written out (nn.GELU's CPU tanh form is 3x slower)
  or the SOFT kernel forward + backward.
* ``nn.GELU(approximate=False)``: the exact-GELU training kernel forward + backward (MindSpore's GELU gradient
  is several times slower on CPU).
* a 3x3 depthwise ``nn.Conv2d`` (stride 1, padding 1): the depthwise training kernel (oneDNN's filter gradient
  of a depthwise convolution is the slowest operator of a SwiftFormer step on CPU).

Each CPU cell computes what it replaces (tested against it, values and gradients) and falls back to the
standard operator for inputs other than float32 (a layer under mixed precision): a bprop cell there would hand
float16 gradients to float32 parameters.
"""
import mindspore as ms
from mindspore import nn, ops
from mindspore.ops.operations import _grad_ops

from .reduce import sum_pixels, sum_rows

__all__ = ["BiasAdd", "LayerNorm", "TanhGELU", "KernelActivation", "Float32Kernel", "HeadwiseConvFn",
           "KernelConvFn", "become", "RULES"]


def become(cell, cls, **attributes):
    """Turn ``cell`` into an instance of ``cls`` (a subclass of its class that only overrides methods), in place,
    and set ``attributes`` on it: its parameters, their names and its sub-cells stay what they are."""
    cell.__class__ = cls
    for name, value in attributes.items():
        setattr(cell, name, value)
    return cell


class Float32Kernel(nn.Cell):
    """``fast(*inputs)`` when the first input is float32, else ``standard(*inputs)`` (the operator or cell it
    stands in for; ``models.cpu.accelerate`` never rewrites it)."""

    def __init__(self, fast, standard):
        super().__init__()
        self.fast = fast
        self.standard = standard

    def construct(self, *inputs):
        if inputs[0].dtype == ms.float32:
            return self.fast(*inputs)
        return self.standard(*inputs)


class _BiasAddFn(nn.Cell):
    """y = x + b[c] along axis 1 of x [R, C] or x [B, C, H, W] with the bias gradient as matmuls against ones:
    ones[1, R] · dy, or the per-(sample, channel) sums dy[B·C, H·W] · ones[H·W, 1] summed over B."""

    def __init__(self):
        super().__init__()
        self.bias_add = ops.BiasAdd()

    def construct(self, x, bias):
        return self.bias_add(x, bias)

    def bprop(self, x, bias, out, dout):
        rows = dout if dout.ndim == 2 else sum_pixels(dout).reshape(dout.shape[0], dout.shape[1])
        return dout, sum_rows(rows).reshape(bias.shape)


def BiasAdd():  # pylint: disable=invalid-name  (a cell factory, used where ops.BiasAdd() was)
    """``ops.BiasAdd`` whose float32 gradient is the matmul form of ``_BiasAddFn``."""
    return Float32Kernel(_BiasAddFn(), ops.BiasAdd())


class _LayerNormFn(nn.Cell):
    """Layer normalisation of x [..., D] over the last axis with a hand-written backward:
    dx = r·(g - mean(g) - x̂·mean(g·x̂)) with g = dy·γ, x̂ = (x - μ)·r; dγ = Σ dy·x̂; dβ = Σ dy,
    as one SOFT kernel when it is built, else with element-wise operators and the means as matmuls."""

    def __init__(self, epsilon, soft_kernels=None):
        super().__init__()
        self.epsilon = epsilon
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=epsilon)
        self.use_kernel = soft_kernels is not None
        self.kernel_grad = soft_kernels.layer_norm_grad if soft_kernels is not None else None

    def construct(self, x, gamma, beta):
        return self.layer_norm(x, gamma, beta)[0]

    def bprop(self, x, gamma, beta, out, dout):
        dim = x.shape[-1]
        rows = x.reshape(-1, dim)
        grad_rows = dout.reshape(-1, dim)
        if self.use_kernel:
            dx, dgamma, dbeta = self.kernel_grad(rows, grad_rows, gamma, ms.Tensor([self.epsilon], ms.float32))
            return dx.reshape(x.shape), dgamma, dbeta
        row_mean = ops.ones((dim, 1), x.dtype) / dim
        centred = rows - ops.matmul(rows, row_mean)
        rstd = ops.rsqrt(ops.matmul(centred * centred, row_mean) + self.epsilon)
        normed = centred * rstd
        g = grad_rows * gamma
        dx = rstd * (g - ops.matmul(g, row_mean) - normed * ops.matmul(g * normed, row_mean))
        col_sum = ops.ones((1, rows.shape[0]), x.dtype)
        dgamma = ops.matmul(col_sum, grad_rows * normed).reshape(dim)
        dbeta = ops.matmul(col_sum, grad_rows).reshape(dim)
        return dx.reshape(x.shape), dgamma, dbeta


class LayerNorm(nn.LayerNorm):
    """What an ``nn.LayerNorm`` over the last axis becomes (``become``): float32 inputs go through
    ``_LayerNormFn`` (attribute ``norm_fn``), others through the standard operator."""

    def construct(self, x):
        if x.dtype == ms.float32:
            return self.norm_fn(x, self.gamma, self.beta)
        return self.layer_norm(x, self.gamma.astype(x.dtype), self.beta.astype(x.dtype))[0]


class KernelActivation(nn.Cell):
    """An element-wise activation run as a CPU kernel, ``forward(x)``, with its gradient kernel
    ``gradient(x, dy) -> dx`` as the backward (float32, any shape)."""

    def __init__(self, forward, gradient):
        super().__init__()
        self.forward = forward
        self.gradient = gradient

    def construct(self, x):
        return self.forward(x)

    def bprop(self, x, out, dout):
        return (self.gradient(x, dout),)


class TanhGELU(nn.Cell):
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), any shape: the SOFT kernel forward and backward for float32
    when it is built, else the formula with standard operators (faster on CPU than nn.GELU's tanh form)."""

    def __init__(self, soft_kernels=None):
        super().__init__()
        self.use_kernel = soft_kernels is not None
        self.kernel = KernelActivation(soft_kernels.tanh_gelu, soft_kernels.tanh_gelu_grad) if self.use_kernel \
            else None

    def construct(self, x):
        if self.use_kernel and x.dtype == ms.float32:
            return self.kernel(x)
        return 0.5 * x * (1.0 + ops.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))


class HeadwiseConvFn(nn.Cell):
    """(x [B, C, H, W], weight [C, 1, k, k]) -> the depthwise k x k convolution (stride 1, 'same' padding) with a
    faster backward: the input gradient is the forward convolution of dy with the spatially flipped kernel
    (CPU's Conv2DBackpropInput is several times slower than Conv2D for SOFT's 9x9 and 5x5 local convolutions).
    Stands in for the ``conv2d`` operator of an ``nn.Conv2d``."""

    def __init__(self, channels, kernel):
        super().__init__()
        pad = kernel // 2
        self.conv = ops.Conv2D(channels, (kernel, kernel), pad_mode="pad", pad=pad, group=channels)
        self.filter_grad = _grad_ops.Conv2DBackpropFilter(channels, (kernel, kernel), pad_mode="pad", pad=pad,
                                                          pad_list=(pad, pad, pad, pad), group=channels)

    def construct(self, x, weight):
        return self.conv(x, weight)

    def bprop(self, x, weight, out, dout):
        dx = self.conv(dout, ops.flip(weight, (2, 3)))
        dw = self.filter_grad(dout, x, weight.shape)
        return ops.cast(dx, x.dtype), ops.cast(dw, weight.dtype)


class KernelConvFn(nn.Cell):
    """(x, weight) -> ``forward(x, weight)``, a depthwise / per-head convolution (stride 1, 'same' zero padding) run
    as a CPU kernel, with its backward from kernels too: the input gradient is the same convolution of dout with
    the weight rotated by 180 degrees, the weight gradient ``filter_grad(dout, x, weight)``. With the training
    kernels' ``depthwise3x3`` it stands in for the ``conv2d`` operator of a 3x3 depthwise ``nn.Conv2d`` (x
    [B, C, H, W], weight [C, 1, 3, 3]; oneDNN's filter gradient of a depthwise convolution is the slowest
    operator of a SwiftFormer step on CPU)."""

    def __init__(self, forward, filter_grad):
        super().__init__()
        self.forward = forward
        self.filter_grad = filter_grad

    def construct(self, x, weight):
        return self.forward(x, weight)

    def bprop(self, x, weight, out, dout):
        return self.forward(dout, ops.flip(weight, (2, 3))), self.filter_grad(dout, x, weight)


# ---------------------------------------------------------------------------------------------------- rules
# A rule takes (cell, kernels) and returns the cell's replacement (a new cell, or the cell itself changed in
# place), or None when it does not apply. Rules never match what a rule produced, so a second pass changes
# nothing.

def _is_float32_kernel(op):
    return isinstance(op, Float32Kernel)


def dense_bias(cell, kernels):
    """nn.Dense (and subclasses) with a bias: ``bias_add`` -> ``BiasAdd()``."""
    if isinstance(cell, nn.Dense) and cell.has_bias and not _is_float32_kernel(cell.bias_add):
        cell.bias_add = BiasAdd()
        return cell
    return None


def _is_depthwise(conv, kernel, padding):
    return (conv.group == conv.in_channels == conv.out_channels and tuple(conv.kernel_size) == (kernel, kernel)
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.pad_mode == "pad"
            and conv.padding == padding)


def conv2d(cell, kernels):
    """nn.Conv2d: a bias -> ``BiasAdd()``; a 3x3 depthwise convolution (stride 1, padding 1) -> the depthwise
    training kernel."""
    if type(cell) is not nn.Conv2d:
        return None
    changed = False
    if cell.has_bias and not _is_float32_kernel(cell.bias_add):
        cell.bias_add = BiasAdd()
        changed = True
    if kernels.training is not None and _is_depthwise(cell, 3, 1) and not _is_float32_kernel(cell.conv2d):
        depthwise = KernelConvFn(kernels.training.depthwise3x3, kernels.training.depthwise3x3_filter_grad)
        cell.conv2d = Float32Kernel(depthwise, cell.conv2d)
        changed = True
    return cell if changed else None


def layer_norm(cell, kernels):
    """nn.LayerNorm over the last axis -> ``LayerNorm``."""
    if type(cell) is nn.LayerNorm and cell.begin_norm_axis == -1 and cell.begin_params_axis == -1:
        return become(cell, LayerNorm, norm_fn=_LayerNormFn(cell.epsilon, kernels.soft))
    return None


def gelu(cell, kernels):
    """nn.GELU: the tanh form -> ``TanhGELU``; the exact form -> the exact-GELU training kernel (float32)."""
    if type(cell) is not nn.GELU:
        return None
    if cell.approximate == "tanh":
        return TanhGELU(kernels.soft)
    if kernels.training is not None:
        return Float32Kernel(KernelActivation(kernels.training.gelu, kernels.training.gelu_grad), cell)
    return None


RULES = (dense_bias, conv2d, layer_norm, gelu)
