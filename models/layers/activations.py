"""Exact GELU without an Erf operator (ONNX export)."""
import math

from mindspore import nn, ops

__all__ = ["ErfFreeGELU"]


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
