"""Activation cells: the tanh-approximate GELU written out, and an exact GELU without Erf (ONNX export)."""
import math

import mindspore as ms
from mindspore import nn, ops

from ..kernels import soft as soft_kernels

__all__ = ["KernelActivation", "TanhGELU", "ErfFreeGELU"]


class KernelActivation(nn.Cell):
    """An element-wise activation run as a CPU kernel, ``forward(x)``, with its gradient kernel
    ``gradient(x, dy) -> dx`` as the backward (float32, any shape; models/kernels)."""

    def __init__(self, forward, gradient):
        super().__init__()
        self.forward = forward
        self.gradient = gradient

    def construct(self, x):
        return self.forward(x)

    def bprop(self, x, out, dout):
        return (self.gradient(x, dout),)


class TanhGELU(nn.Cell):
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), any shape.

    Written out with standard operators (faster than nn.GELU(approximate=True)); with the SOFT CPU kernels
    built and allowed (models/kernels/soft.py), a float32 input runs as one kernel forward and one backward
    instead of about ten element-wise passes (``use_cpu_kernels`` False gives the operators, as export does).
    """

    def __init__(self):
        super().__init__()
        cpu = soft_kernels.load()
        self.use_cpu_kernels = cpu is not None
        self.kernel = KernelActivation(cpu.tanh_gelu, cpu.tanh_gelu_grad) if cpu is not None else None

    def construct(self, x):
        if self.use_cpu_kernels and x.dtype == ms.float32:
            return self.kernel(x)
        return 0.5 * x * (1.0 + ops.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))


# erfc(z) ≈ t·exp(-z² + P(t)), t = 1 / (1 + z/2), z >= 0 (Chebyshev fit, relative error < 1.2e-7).
_ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
                -1.13520398, 1.48851587, -0.82215223, 0.17087277)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


class ErfFreeGELU(nn.Cell):
    """Exact GELU x·Φ(x) without an Erf operator (MindSpore's ONNX exporter has none).

    Φ(x) = 1 - h for x > 0 and h otherwise, with h = erfc(|x|/√2) / 2 and erfc from a degree-9
    Chebyshev-rational fit. Uses Abs, Div, Mul, Add, Exp, Greater and Where only.
    """

    def construct(self, x):
        z = ops.abs(x) * _INV_SQRT2
        t = ops.div(1.0, 1.0 + 0.5 * z)
        poly = t * _ERFC_COEFFS[9] + _ERFC_COEFFS[8]
        poly = poly * t + _ERFC_COEFFS[7]
        poly = poly * t + _ERFC_COEFFS[6]
        poly = poly * t + _ERFC_COEFFS[5]
        poly = poly * t + _ERFC_COEFFS[4]
        poly = poly * t + _ERFC_COEFFS[3]
        poly = poly * t + _ERFC_COEFFS[2]
        poly = poly * t + _ERFC_COEFFS[1]
        poly = poly * t + _ERFC_COEFFS[0]
        half_erfc = 0.5 * t * ops.exp(poly - z * z)
        return x * ops.where(x > 0, 1.0 - half_erfc, half_erfc)
