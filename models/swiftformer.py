"""SwiftFormer backbones (Shaker et al., ICCV 2023) for MindSpore.

Input [B, 3, H, W] with H and W multiples of 32. A two-conv stem brings the image to H/4 x W/4, then
four stages follow, stage i (0-based) working on an H/4/2^i x W/4/2^i map with C_i channels. Each stage
is (depth_i - 1) ``ConvEncoder`` blocks and one ``SwiftFormerEncoder`` (local representation, efficient
additive attention, MLP); stages are joined by stride-2 conv + BN ``Embedding`` layers. The head is
BN -> global average pool -> ``head`` (plus the distillation ``dist_head``).

Module and parameter paths are the reference PyTorch code's (``patch_embed.0.weight``,
``network.0.2.attn.to_query.weight``, ...), so importing its checkpoints only renames the BatchNorm
parameters (see ``torch_param_names``).

Speed notes (the numerics are the reference's up to float32 rounding, ~1e-7):
* every feature map stays channels-first [B, C, H, W]; the attention reads it as tokens [B, C, N]
  (N = H*W, a free reshape) and applies its Linear layers as W @ x, so no transpose is needed;
* in evaluation mode each BatchNorm is folded into the convolution before or after it;
* on CPU a few small fused kernels (bias + exact GELU and the layer-scaled residual x + s * (z + b);
  in evaluation mode also the 3x3 depthwise convolution, the key/query normalisation and the stem's
  bias + ReLU) are compiled once with the system C++ compiler and run as MindSpore ``Custom``
  operators. Without a compiler, or with ``fused_kernels=False`` (use this for MINDIR / ONNX export),
  standard operators are used.

    >>> from models import create_model
    >>> net = create_model("SwiftFormer_XS")            # 3,475,360 parameters
    >>> net.set_train(False); logits = net(x)            # x [B, 3, 224, 224] -> [B, 1000]
"""
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings

import numpy as np

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal, initializer

from .registry import register_model
from .softmax_free_transformer import DropPath

__all__ = ["SwiftFormer", "EfficientAdditiveAttention", "SwiftFormerEncoder", "ConvEncoder", "Mlp", "Embedding",
           "VARIANTS", "fused_kernels_available", "torch_param_names", "variant_overrides_from_torch"]

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


# ----------------------------------------------------------------------------------------------------
# Fused CPU kernels (MindSpore "aot" Custom operators)

_KERNEL_SOURCE = r"""
// SwiftFormer fused CPU kernels for channels-first float32 tensors [B, C, ...] (MindSpore aot ABI).
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

// exp(v) for v <= 0: 2^k * exp(r) with |r| <= ln2 / 2 and a degree-7 Taylor polynomial (~1 ulp).
inline float exp_nonpos(float v) {
  v = v > -87.0f ? v : -87.0f;
  const float k = __builtin_floorf(v * 1.4426950408889634f + 0.5f);
  float r = v - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Phi(v) = erfc(-v / sqrt 2) / 2 with erfc from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, the same
// approximation PyTorch's vectorised CPU erf uses); also returns exp(-v^2 / 2).
inline float normal_cdf(float v, float &gauss) {
  const float a = (v >= 0.0f ? v : -v) * 0.7071067811865476f;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  gauss = exp_nonpos(-a * a);
  const float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
                      0.254829592f) * t;
  const float half_tail = 0.5f * poly * gauss;
  return v >= 0.0f ? 1.0f - half_tail : half_tail;
}

void bias_gelu_plane(const float *__restrict x, float b, float *__restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] + b;
    float g;
    y[i] = v * normal_cdf(v, g);
  }
}

void bias_gelu_grad_plane(const float *__restrict x, float b, const float *__restrict dy, float *__restrict dx,
                          int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] + b;
    float g;
    const float c = normal_cdf(v, g);
    dx[i] = dy[i] * (c + v * g * 0.3989422804014327f);
  }
}

void scale_residual_plane(const float *__restrict x, const float *__restrict z, float s, float b,
                          float *__restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] + s * (z[i] + b);
}

// Runs body(first_plane, end_plane) over `planes` planes of `plane_size` elements on a few threads.
template <typename Body>
void parallel_planes(int64_t planes, int64_t plane_size, Body body) {
  int64_t threads = static_cast<int64_t>(std::thread::hardware_concurrency());
  threads = threads < 1 ? 1 : (threads > 8 ? 8 : threads);
  const int64_t by_work = (planes * plane_size) >> 16;  // at least 64K elements a thread
  if (by_work < threads) threads = by_work < 1 ? 1 : by_work;
  if (planes < threads) threads = planes;
  if (threads <= 1) {
    body(0, planes);
    return;
  }
  const int64_t per = (planes + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t s = t * per, e = (s + per < planes) ? s + per : planes;
    if (s < e) pool.emplace_back(body, s, e);
  }
  body(0, per < planes ? per : planes);
  for (auto &th : pool) th.join();
}

// one output row of a 3x3 depthwise convolution (zero padding 1): out += w0 * row[j-1] + w1 * row[j] + w2 * row[j+1]
void depthwise_row(float *__restrict out, const float *__restrict row, float w0, float w1, float w2, int64_t W) {
  if (W == 1) {
    out[0] += w1 * row[0];
    return;
  }
  out[0] += w1 * row[0] + w2 * row[1];
  for (int64_t j = 1; j < W - 1; ++j) out[j] += w0 * row[j - 1] + w1 * row[j] + w2 * row[j + 1];
  out[W - 1] += w0 * row[W - 2] + w1 * row[W - 1];
}

void depthwise_plane(const float *__restrict x, const float *__restrict w, float *__restrict y, int64_t H,
                     int64_t W) {
  for (int64_t i = 0; i < H; ++i) {
    float *out = y + i * W;
    for (int64_t j = 0; j < W; ++j) out[j] = 0.0f;
    for (int64_t d = 0; d < 3; ++d) {
      const int64_t r = i + d - 1;
      if (r >= 0 && r < H) depthwise_row(out, x + r * W, w[3 * d], w[3 * d + 1], w[3 * d + 2], W);
    }
  }
}

// [B, C, ...] -> B*C planes of prod(...) elements; plane p has channel p % C.
void plane_layout(int nd, const int64_t *shape, int64_t &planes, int64_t &size, int64_t &channels) {
  channels = nd > 1 ? shape[1] : 1;
  planes = nd > 0 ? shape[0] * channels : 1;
  size = 1;
  for (int i = 2; i < nd; ++i) size *= shape[i];
}

}  // namespace

// y = gelu(x + bias[c]);  params: x [B, C, ...], bias [C], y
extern "C" int SwiftBiasGelu(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  int64_t planes, size, channels;
  plane_layout(ndims[0], shapes[0], planes, size, channels);
  parallel_planes(planes, size, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p) bias_gelu_plane(x + p * size, bias[p % channels], y + p * size, size);
  });
  return 0;
}

// dx = dy * gelu'(x + bias[c]);  params: x, bias, dy, dx
extern "C" int SwiftBiasGeluGrad(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  const float *dy = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  int64_t planes, size, channels;
  plane_layout(ndims[0], shapes[0], planes, size, channels);
  parallel_planes(planes, size, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p)
      bias_gelu_grad_plane(x + p * size, bias[p % channels], dy + p * size, dx + p * size, size);
  });
  return 0;
}

// y = depthwise 3x3 convolution of x (stride 1, zero padding 1, no bias);  params: x [B, C, H, W], w [C, 1, 3, 3], y
extern "C" int SwiftDepthwise3x3(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  if (ndims[0] != 4) return 1;
  const int64_t C = shapes[0][1], H = shapes[0][2], W = shapes[0][3];
  parallel_planes(shapes[0][0] * C, H * W, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p) depthwise_plane(x + p * H * W, w + (p % C) * 9, y + p * H * W, H, W);
  });
  return 0;
}

// Key/query normalisation of the attention, per token n of sample b (kq = [k; q] channels-first, 2C rows):
//   y[b, c, n] = (kq[b, c, n] + bias[c]) / max(|k_n| or |q_n|, 1e-12),  a[b, n] = (wg . q_n) / max(|q_n|, 1e-12)
// params: kq [B, 2C, N], bias [2C], wg [C], y [B, 2C, N], a [B, 1, N]
extern "C" int SwiftKeyQueryNorm(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *kq = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  const float *wg = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  float *a = static_cast<float *>(params[4]);
  if (ndims[0] != 3) return 1;
  const int64_t C2 = shapes[0][1], C = C2 / 2, N = shapes[0][2];
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  parallel_planes(shapes[0][0] * chunks, C2 * (N < kChunk ? N : kChunk), [=](int64_t s, int64_t e) {
    float ssk[kChunk], ssq[kChunk], dot[kChunk];
    for (int64_t task = s; task < e; ++task) {
      const int64_t b = task / chunks, n0 = (task % chunks) * kChunk;
      const int64_t len = (N - n0) < kChunk ? (N - n0) : kChunk;
      const float *xb = kq + b * C2 * N + n0;
      float *yb = y + b * C2 * N + n0;
      for (int64_t j = 0; j < len; ++j) ssk[j] = ssq[j] = dot[j] = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        const float *row = xb + c * N;
        const float bc = bias[c];
        for (int64_t j = 0; j < len; ++j) {
          const float v = row[j] + bc;
          ssk[j] += v * v;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const float *row = xb + (C + c) * N;
        const float bc = bias[C + c], w = wg[c];
        for (int64_t j = 0; j < len; ++j) {
          const float v = row[j] + bc;
          ssq[j] += v * v;
          dot[j] += w * v;
        }
      }
      for (int64_t j = 0; j < len; ++j) {
        const float nk = __builtin_sqrtf(ssk[j]), nq = __builtin_sqrtf(ssq[j]);
        ssk[j] = 1.0f / (nk > 1e-12f ? nk : 1e-12f);
        ssq[j] = 1.0f / (nq > 1e-12f ? nq : 1e-12f);
        a[b * N + n0 + j] = dot[j] * ssq[j];
      }
      for (int64_t c = 0; c < C2; ++c) {
        const float *row = xb + c * N;
        float *out = yb + c * N;
        const float bc = bias[c];
        const float *inv = c < C ? ssk : ssq;
        for (int64_t j = 0; j < len; ++j) out[j] = (row[j] + bc) * inv[j];
      }
    }
  });
  return 0;
}

// y = max(x + bias[c], 0);  params: x [B, C, ...], bias [C], y
extern "C" int SwiftBiasRelu(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  int64_t planes, size, channels;
  plane_layout(ndims[0], shapes[0], planes, size, channels);
  parallel_planes(planes, size, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p) {
      const float b = bias[p % channels];
      const float *__restrict xp = x + p * size;
      float *__restrict yp = y + p * size;
      for (int64_t i = 0; i < size; ++i) {
        const float v = xp[i] + b;
        yp[i] = v > 0.0f ? v : 0.0f;
      }
    }
  });
  return 0;
}

// y = x + scale[c] * (z + bias[c]);  params: x [B, C, ...], z [B, C, ...], scale [C, 1, 1], bias [C], y
extern "C" int SwiftScaleResidual(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *z = static_cast<const float *>(params[1]);
  const float *scale = static_cast<const float *>(params[2]);
  const float *bias = static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  int64_t planes, size, channels;
  plane_layout(ndims[0], shapes[0], planes, size, channels);
  parallel_planes(planes, size, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p) {
      const int64_t c = p % channels;
      scale_residual_plane(x + p * size, z + p * size, scale[c], bias[c], y + p * size, size);
    }
  });
  return 0;
}
"""

_FUSED_STATE = {}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _kernel_flag_sets():
    """Compiler flag sets to try, best first (AVX-512 / AVX2 builds where the CPU has them)."""
    base = ["-std=c++17", "-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-pthread"]
    cpu = _cpu_flags() if platform.machine() in ("x86_64", "AMD64") else set()
    sets = [base]
    if {"avx2", "fma"} <= cpu:
        sets.insert(0, base + ["-mavx2", "-mfma"])
        if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= cpu:
            sets.insert(0, sets[0] + ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl",
                                      "-mprefer-vector-width=512"])
    return sets


def _compile_kernel_library():
    """Compile ``_KERNEL_SOURCE`` once per machine into a cached shared library; returns its path."""
    if platform.system() != "Linux":
        raise RuntimeError("MindSpore aot custom operators need Linux")
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found")
    cache_dir = os.environ.get("SWIFTFORMER_KERNEL_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "mindspore_swiftformer")
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError:
        cache_dir = os.path.join(tempfile.gettempdir(), "mindspore_swiftformer")
        os.makedirs(cache_dir, exist_ok=True)
    error = None
    for flags in _kernel_flag_sets():
        key = hashlib.sha1("\0".join([_KERNEL_SOURCE, cxx] + flags).encode()).hexdigest()[:16]
        lib = os.path.join(cache_dir, f"swiftformer_cpu_{key}.so")
        if os.path.isfile(lib):
            return lib
        fd, src = tempfile.mkstemp(suffix=".cc", dir=cache_dir)
        tmp_lib = src[:-3] + ".so"
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_KERNEL_SOURCE)
            proc = subprocess.run([cxx] + flags + ["-o", tmp_lib, src], capture_output=True, text=True,
                                  timeout=300, check=False)
            if proc.returncode == 0:
                os.replace(tmp_lib, lib)  # atomic: concurrent ranks may compile at the same time
                return lib
            error = f"{cxx} failed: {proc.stderr.strip()[-500:]}"
        finally:
            for path in (src, tmp_lib):
                if os.path.exists(path):
                    os.remove(path)
    raise RuntimeError(error)


def _first_shape(*shapes):
    return shapes[0]


def _first_dtype(*dtypes):
    return dtypes[0]


def _key_query_norm_shapes(kq, bias, wg):
    return kq, [kq[0], 1, kq[2]]


def _key_query_norm_dtypes(kq, bias, wg):
    return kq, kq


def _make_fused_ops():
    """Build the Custom operators: bias_gelu(x, bias), scale_residual(x, z, scale, bias); for evaluation
    depthwise3x3(x, w), bias_relu(x, bias) and key_query_norm(kq, bias, wg) -> (kq normalised, a)."""
    lib = _compile_kernel_library()
    bias_gelu_grad = ops.Custom(f"{lib}:SwiftBiasGeluGrad", _first_shape, _first_dtype, func_type="aot")

    def bias_gelu_bprop(x, bias, out, dout):
        dx = bias_gelu_grad(x, bias, dout)
        return dx, dx.sum(axis=(0, 2, 3))

    def scale_residual_bprop(x, z, scale, bias, out, dout):
        dz = dout * scale
        dscale = (dout * (z + bias.reshape(-1, 1, 1))).sum(axis=(0, 2, 3)).reshape(scale.shape)
        return dout, dz, dscale, dz.sum(axis=(0, 2, 3))

    return {
        "bias_gelu": ops.Custom(f"{lib}:SwiftBiasGelu", _first_shape, _first_dtype, func_type="aot",
                                bprop=bias_gelu_bprop),
        "scale_residual": ops.Custom(f"{lib}:SwiftScaleResidual", _first_shape, _first_dtype, func_type="aot",
                                     bprop=scale_residual_bprop),
        # evaluation only (training uses standard operators and their gradients)
        "depthwise3x3": ops.Custom(f"{lib}:SwiftDepthwise3x3", _first_shape, _first_dtype, func_type="aot"),
        "bias_relu": ops.Custom(f"{lib}:SwiftBiasRelu", _first_shape, _first_dtype, func_type="aot"),
        "key_query_norm": ops.Custom(f"{lib}:SwiftKeyQueryNorm", _key_query_norm_shapes, _key_query_norm_dtypes,
                                     func_type="aot"),
    }


def _fused_ops(required=False):
    """The fused CPU operators, or None where they cannot be built (the reason is warned about once)."""
    if "ops" not in _FUSED_STATE and "error" not in _FUSED_STATE:
        try:
            _FUSED_STATE["ops"] = _make_fused_ops()
        except Exception as err:  # pylint: disable=broad-except  (any failure means: use standard ops)
            _FUSED_STATE["error"] = err
            warnings.warn(f"SwiftFormer: fused CPU kernels unavailable ({err}); using standard MindSpore "
                          "operators (slower).", RuntimeWarning)
    if "error" in _FUSED_STATE:
        if required:
            raise RuntimeError(f"SwiftFormer fused CPU kernels unavailable: {_FUSED_STATE['error']}")
        return None
    return _FUSED_STATE["ops"]


def fused_kernels_available():
    """Whether the fused CPU kernels can be used on this machine (compiles them on first call)."""
    return _fused_ops() is not None


def _resolve_fused(fused_kernels):
    """None (auto) / True (required) / False -> the operators or None.

    Auto means: on when the device target is CPU, unless the environment variable
    ``SWIFTFORMER_FUSED_KERNELS`` is 0 / false / off (export scripts can set it).
    """
    if fused_kernels is None:
        if os.environ.get("SWIFTFORMER_FUSED_KERNELS", "").strip().lower() in ("0", "false", "off", "no"):
            return None
        if ms.get_context("device_target") != "CPU":
            return None
        return _fused_ops()
    return _fused_ops(required=True) if fused_kernels else None


class BiasGELU(nn.Cell):
    """y = GELU(x + bias[c]) with the exact (erf) GELU; x [B, C, H, W], bias [C] -> [B, C, H, W].

    Uses the fused CPU kernel when given (float32 only), else standard operators.
    """

    def __init__(self, fused=None):
        super().__init__()
        self.use_fused = fused is not None
        if self.use_fused:
            self.fused = fused["bias_gelu"]
        self.act = nn.GELU(approximate=False)

    def construct(self, x, bias):
        if self.use_fused and x.dtype == ms.float32:
            return self.fused(x, bias)
        return self.act(x + bias.reshape(1, -1, 1, 1))


class ScaleResidual(nn.Cell):
    """y = x + scale * (z + bias[c]); x, z [B, C, H, W], scale [C, 1, 1], bias [C] -> [B, C, H, W]."""

    def __init__(self, fused=None):
        super().__init__()
        self.use_fused = fused is not None
        if self.use_fused:
            self.fused = fused["scale_residual"]

    def construct(self, x, z, scale, bias):
        if self.use_fused and x.dtype == ms.float32:
            return self.fused(x, z, scale, bias)
        return x + scale * (z + bias.reshape(-1, 1, 1))


class Depthwise3x3(nn.Cell):
    """Depthwise 3x3 convolution, stride 1, zero padding 1, no bias: x [B, C, H, W], w [C, 1, 3, 3] -> [B, C, H, W].

    The fused CPU kernel is used for float32 when given (it has no gradient: evaluation mode only).
    """

    def __init__(self, conv, fused=None):
        super().__init__()
        self.use_fused = fused is not None
        if self.use_fused:
            self.fused = fused["depthwise3x3"]
        self.conv2d = conv.conv2d

    def construct(self, x, weight):
        if self.use_fused and x.dtype == ms.float32:
            return self.fused(x, weight)
        return self.conv2d(x, weight)


# ----------------------------------------------------------------------------------------------------
# Layers

def _conv(in_ch, out_ch, kernel, stride=1, group=1):
    """Conv2d with the reference's padding (k // 2), bias, and truncated-normal(0.02) weights."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=kernel // 2,
                     group=group, has_bias=True, weight_init=TruncatedNormal(0.02), bias_init="zeros")


def _bn(ch):
    """BatchNorm2d, eps 1e-5, PyTorch momentum 0.1 (MindSpore 0.9)."""
    return nn.BatchNorm2d(ch, eps=_BN_EPS, momentum=0.9)


def _dense(in_ch, out_ch):
    return nn.Dense(in_ch, out_ch, weight_init=TruncatedNormal(0.02), bias_init="zeros")


def _layer_scale(ch, value):
    """A per-channel layer scale [C, 1, 1] filled with ``value``."""
    return ms.Parameter(ms.Tensor(np.full((ch, 1, 1), value, np.float32)))


def _bn_affine(bn):
    """Evaluation-mode BatchNorm as y = s * x + t: returns (s, t), each [C]."""
    s = bn.gamma / ops.sqrt(bn.moving_variance + _BN_EPS)
    return s, bn.beta - bn.moving_mean * s


def _conv_bn(conv, bn, x, training):
    """bn(conv(x)); in evaluation mode the BatchNorm is folded into the convolution."""
    if training:
        return bn(conv(x))
    s, t = _bn_affine(bn)
    y = conv.conv2d(x, conv.weight * s.reshape(-1, 1, 1, 1))
    return ops.bias_add(y, conv.bias * s + t)


def _pw_weight_bn(conv, s):
    """Weight [C_out, C_in, 1, 1] of a 1x1 conv that follows y = s * x + t: W * s along the input axis."""
    return conv.weight * s.reshape(1, -1, 1, 1)


def _pw_bias_bn(conv, t):
    """Bias of a 1x1 conv that follows y = s * x + t: b + W @ t, [C_out]."""
    w = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])
    return conv.bias + ops.matmul(w, t.reshape(-1, 1)).reshape(-1)


class Stem(nn.SequentialCell):
    """[B, 3, H, W] -> [B, C, H/4, W/4]: Conv3x3(s2) -> BN -> ReLU -> Conv3x3(s2) -> BN -> ReLU.

    A SequentialCell so that the parameter paths are the reference's (``patch_embed.0.weight``, ...).
    """

    def __init__(self, in_ch, out_ch, fused=None):
        super().__init__([_conv(in_ch, out_ch // 2, 3, stride=2), _bn(out_ch // 2), nn.ReLU(),
                          _conv(out_ch // 2, out_ch, 3, stride=2), _bn(out_ch), nn.ReLU()])
        self.use_fused = fused is not None
        if self.use_fused:
            self.bias_relu = fused["bias_relu"]

    def _conv_bn_relu(self, conv, bn, relu, x):
        if self.training:
            return relu(bn(conv(x)))
        s, t = _bn_affine(bn)  # evaluation: BN folded into the convolution
        y = conv.conv2d(x, conv.weight * s.reshape(-1, 1, 1, 1))
        if self.use_fused and x.dtype == ms.float32:
            return self.bias_relu(y, conv.bias * s + t)
        return relu(ops.bias_add(y, conv.bias * s + t))

    def construct(self, x):
        x = self._conv_bn_relu(self[0], self[1], self[2], x)
        return self._conv_bn_relu(self[3], self[4], self[5], x)


class Embedding(nn.Cell):
    """Downsampling between stages: Conv3x3(stride 2, pad 1) -> BN, [B, C_in, H, W] -> [B, C_out, H/2, W/2]."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.proj = _conv(in_ch, out_ch, 3, stride=2)
        self.norm = _bn(out_ch)

    def construct(self, x):
        return _conv_bn(self.proj, self.norm, x, self.training)


class ConvEncoder(nn.Cell):
    """x + layer_scale * PW2(GELU(PW1(BN(DWConv3x3(x))))) on [B, C, H, W] -> [B, C, H, W].

    Also the ``local_representation`` of a ``SwiftFormerEncoder`` (hidden = C there).

    Args:
        dim: C.
        hidden: width of the point-wise expansion (4C in ConvEncoder blocks).
        drop_path: stochastic-depth rate of the residual branch (the reference uses 0 everywhere).
        fused: the fused CPU operators or None.
    """

    def __init__(self, dim, hidden, drop_path=0.0, fused=None):
        super().__init__()
        self.dwconv = _conv(dim, dim, 3, group=dim)
        self.depthwise = Depthwise3x3(self.dwconv, fused)
        self.norm = _bn(dim)
        self.pwconv1 = _conv(dim, hidden, 1)
        self.act = BiasGELU(fused)
        self.pwconv2 = _conv(hidden, dim, 1)
        self.has_drop_path = drop_path > 0
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.residual = ScaleResidual(fused)
        self.layer_scale = _layer_scale(dim, 1.0)

    def construct(self, x):
        pw1 = self.pwconv1
        if self.training:
            h = pw1.conv2d(self.norm(self.dwconv(x)), pw1.weight)
            h = self.act(h, pw1.bias)
        else:  # BN(dw(x) + b_dw) = s * dw(x) + (s * b_dw + t), folded into pwconv1
            s, t = _bn_affine(self.norm)
            y = self.depthwise(x, self.dwconv.weight)
            h = pw1.conv2d(y, _pw_weight_bn(pw1, s))
            h = self.act(h, _pw_bias_bn(pw1, s * self.dwconv.bias + t))
        z = self.pwconv2.conv2d(h, self.pwconv2.weight)
        if self.training and self.has_drop_path:
            return x + self.drop_path(self.layer_scale * ops.bias_add(z, self.pwconv2.bias))
        return self.residual(x, z, self.layer_scale, self.pwconv2.bias)


class Mlp(nn.Cell):
    """BN -> Conv1x1(C, hidden) -> GELU -> Conv1x1(hidden, C) on [B, C, H, W] -> [B, C, H, W].

    ``hidden_act(x)`` returns GELU(fc1(BN(x))) (after dropout); the encoder applies fc2 itself.
    """

    def __init__(self, dim, hidden, drop=0.0, fused=None):
        super().__init__()
        self.norm1 = _bn(dim)
        self.fc1 = _conv(dim, hidden, 1)
        self.act = BiasGELU(fused)
        self.fc2 = _conv(hidden, dim, 1)
        self.drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()

    def hidden_act(self, x):
        """[B, C, H, W] -> [B, hidden, H, W]."""
        fc1 = self.fc1
        if self.training:
            h = self.act(fc1.conv2d(self.norm1(x), fc1.weight), fc1.bias)
        else:
            s, t = _bn_affine(self.norm1)
            h = self.act(fc1.conv2d(x, _pw_weight_bn(fc1, s)), _pw_bias_bn(fc1, t))
        return self.drop(h)

    def construct(self, x):
        return self.drop(self.fc2(self.hidden_act(x)))


class EfficientAdditiveAttention(nn.Cell):
    """Efficient additive attention (one head), computed on channels-first tokens.

    For tokens t [B, N, C] (N = H*W) the reference computes
        q = l2n(t W_q^T + b_q), k = l2n(t W_k^T + b_k)        (l2n: x / max(|x|, 1e-12) over channels)
        a = l2n_tokens(q w_g * C^-0.5)                         [B, N, 1], unit L2 norm over the N tokens
        g = sum_n a_n q_n                                      [B, C]
        out = final(Proj(g * k) + q)                           [B, N, C]
    This cell takes the map x [B, C, H, W] (t channels-first) and returns ``out`` in the same layout. It
    evaluates the same expression re-associated so that the big tensors are touched few times:
    [k; q] comes from one 1x1 convolution with the stacked weights, both channel norms from one more,
    q . w_g from a single weight row applied to x, and
        final(Proj(g * k) + q) = [W_f W_p diag(g) | W_f] @ [k; q] + (W_f b_p + b_f)
    is one batched matmul (the C x 2C matrix per sample is cheap to form). ``token_weights`` exposes a.

    Args:
        dim: C (query / key / token width are all C, as in every released variant).
        fused: the fused CPU operators (evaluation uses the key/query normalisation kernel) or None.
    """

    def __init__(self, dim, fused=None):
        super().__init__()
        self.dim = dim
        self.to_query = _dense(dim, dim)
        self.to_key = _dense(dim, dim)
        self.w_g = ms.Parameter(initializer(Normal(1.0), (dim, 1), ms.float32))
        self.scale_factor = dim ** -0.5
        self.Proj = _dense(dim, dim)  # pylint: disable=invalid-name  (the reference's name)
        self.final = _dense(dim, dim)
        self.use_fused = fused is not None
        if self.use_fused:
            self.key_query_norm = fused["key_query_norm"]
        # rows 0 / 1 sum the squares of the key / query halves of [k; q]
        pair_sum = np.zeros((2, 2 * dim, 1, 1), np.float32)
        pair_sum[0, :dim] = 1.0
        pair_sum[1, dim:] = 1.0
        self.pair_sum = ms.Tensor(pair_sum)

    def _keys_queries(self, x):
        """x [B, C, H, W] -> ([k; q] [B, 2C, N] with unit-norm tokens, a [B, 1, N] before its token norm)."""
        b, c, h, w = x.shape
        n = h * w
        weight = ops.concat((self.to_key.weight, self.to_query.weight), axis=0).reshape(2 * c, c, 1, 1)
        bias = ops.concat((self.to_key.bias, self.to_query.bias))
        wg = self.w_g.reshape(1, -1) * self.scale_factor
        kq = ops.conv2d(x, weight)
        if self.use_fused and not self.training and x.dtype == ms.float32:
            return self.key_query_norm(kq.reshape(b, 2 * c, n), bias, wg.reshape(-1))
        kq = ops.bias_add(kq, bias)
        sq = ops.conv2d(kq * kq, self.pair_sum).reshape(b, 2, 1, n)  # squared norms of k and q
        inv = ops.div(1.0, ops.maximum(ops.sqrt(sq), _L2_EPS))  # ops.div: a scalar / tensor exports as Reciprocal
        kq = (kq.reshape(b, 2, c, n) * inv).reshape(b, 2 * c, n)
        # a = (w_g . q) C^-0.5 / |q|, with w_g . q = (w_g^T W_q) x + w_g . b_q: one row instead of a pass over q
        row = ops.matmul(wg, self.to_query.weight).reshape(1, c, 1, 1)
        a = ops.bias_add(ops.conv2d(x, row), ops.matmul(wg, self.to_query.bias.reshape(-1, 1)).reshape(-1))
        return kq, a.reshape(b, 1, n) * inv[:, 1].reshape(b, 1, n)

    def _normalised(self, x):
        kq, a = self._keys_queries(x)
        return kq, a / ops.maximum(ops.sqrt((a * a).sum(axis=2, keepdims=True)), _L2_EPS)

    def token_weights(self, x):
        """The normalised token weights a: x [B, C, H, W] -> [B, N] (sum of squares over N is 1)."""
        _, a = self._normalised(x)
        return a.reshape(a.shape[0], -1)

    def branch(self, x):
        """The attention output without its final bias: (z [B, C, H, W], bias [C]); out = z + bias."""
        b, c, h, w = x.shape
        kq, a = self._normalised(x)
        g = ops.matmul(kq, a.swapaxes(1, 2))[:, c:]  # [B, C, 1] = sum_n a_n q_n
        wf = self.final.weight
        weights = ops.concat((ops.matmul(wf, self.Proj.weight), wf), axis=1)  # [C, 2C] = [W_f W_p | W_f]
        mixed = weights * ops.concat((g, ops.ones_like(g)), axis=1).swapaxes(1, 2)  # [B, C, 2C]
        z = ops.matmul(mixed, kq).reshape(b, c, h, w)
        bias = ops.matmul(wf, self.Proj.bias.reshape(-1, 1)).reshape(-1) + self.final.bias
        return z, bias

    def construct(self, x):
        z, bias = self.branch(x)
        return ops.bias_add(z, bias)


class SwiftFormerEncoder(nn.Cell):
    """Last block of a stage, [B, C, H, W] -> [B, C, H, W]:
        x = LocalRep(x); x = x + ls1 * Attn(x); x = x + ls2 * MLP(x).

    Args:
        dim: C.
        mlp_ratio: MLP hidden width / C.
        drop: dropout inside the MLP.
        drop_path: stochastic-depth rate of the attention and MLP branches.
        layer_scale_init_value: initial value of ``layer_scale_1`` / ``layer_scale_2``.
        fused: the fused CPU operators or None.
    """

    def __init__(self, dim, mlp_ratio=4.0, drop=0.0, drop_path=0.0, layer_scale_init_value=1e-5, fused=None):
        super().__init__()
        self.local_representation = ConvEncoder(dim, dim, fused=fused)
        self.attn = EfficientAdditiveAttention(dim, fused=fused)
        self.linear = Mlp(dim, int(dim * mlp_ratio), drop=drop, fused=fused)
        self.plain = drop_path > 0 or drop > 0  # training then needs the unfused residuals
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.residual = ScaleResidual(fused)
        self.layer_scale_1 = _layer_scale(dim, layer_scale_init_value)
        self.layer_scale_2 = _layer_scale(dim, layer_scale_init_value)

    def construct(self, x):
        x = self.local_representation(x)
        if self.training and self.plain:
            x = x + self.drop_path(self.layer_scale_1 * self.attn(x))
            return x + self.drop_path(self.layer_scale_2 * self.linear(x))
        z, bias = self.attn.branch(x)
        x = self.residual(x, z, self.layer_scale_1, bias)
        fc2 = self.linear.fc2
        z = fc2.conv2d(self.linear.hidden_act(x), fc2.weight)
        return self.residual(x, z, self.layer_scale_2, fc2.bias)


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
        fused_kernels: None (default): use the fused CPU kernels when the device target is CPU and they
            can be compiled (environment variable SWIFTFORMER_FUSED_KERNELS=0 turns this off);
            False: standard operators only (use this for MINDIR / ONNX export); True: require them.

    Input [B, in_chans, H, W], H and W multiples of 32 (ValueError otherwise). Output: evaluation mode
    [B, num_classes]; training mode with distillation a tuple of two [B, num_classes].
    """

    def __init__(self, embed_dims, depths, num_classes=1000, distillation=True, mlp_ratio=4.0, drop_rate=0.0,
                 drop_path_rate=0.0, layer_scale_init_value=1e-5, in_chans=3, fused_kernels=None):
        super().__init__()
        embed_dims, depths = tuple(int(d) for d in embed_dims), tuple(int(n) for n in depths)
        if len(embed_dims) != len(depths) or min(depths) < 1:
            raise ValueError(f"embed_dims {embed_dims} and depths {depths} must have the same length, "
                             "with at least one block per stage.")
        fused = _resolve_fused(fused_kernels)
        self.uses_fused_kernels = fused is not None
        self.embed_dims, self.depths = embed_dims, depths
        self.num_classes = int(num_classes)
        self.num_features = embed_dims[-1]
        self.distillation = bool(distillation) and self.num_classes > 0
        self.patch_embed = Stem(in_chans, embed_dims[0], fused=fused)

        total = sum(depths)
        layers = []
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            blocks = [ConvEncoder(dim, int(dim * mlp_ratio), fused=fused) for _ in range(depth - 1)]
            dpr = drop_path_rate * (sum(depths[:i]) + depth - 1) / max(total - 1, 1)
            blocks.append(SwiftFormerEncoder(dim, mlp_ratio, drop=drop_rate, drop_path=dpr,
                                             layer_scale_init_value=layer_scale_init_value, fused=fused))
            layers.append(nn.SequentialCell(blocks))
            if i + 1 < len(embed_dims):
                layers.append(Embedding(dim, embed_dims[i + 1]))
        self.network = nn.CellList(layers)

        self.norm = _bn(self.num_features)
        if self.num_classes > 0:
            self.head = _dense(self.num_features, self.num_classes)
            if self.distillation:
                self.dist_head = _dense(self.num_features, self.num_classes)
        else:
            self.head = nn.Identity()

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
        if self.training:
            return self.norm(x).mean(axis=(2, 3))
        s, t = _bn_affine(self.norm)  # evaluation BN is affine: pool first, then normalise
        return x.mean(axis=(2, 3)) * s + t

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
# PyTorch checkpoint import (used by src/torch_checkpoint.py)

def torch_param_names(net):
    """Our parameter name -> the reference state-dict name, for every parameter of ``net``.

    The module paths are the reference's, so only the BatchNorm parameters are renamed
    (gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var).
    """
    from src.torch_checkpoint import norm_layer_torch_names
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
