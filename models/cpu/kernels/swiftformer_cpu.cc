// SwiftFormer CPU kernels for the fused inference path, float32 channels-first tensors [B, C, ...].
//
// Each exported function is a MindSpore "aot" Custom operator (ops.Custom("<lib>:<name>", ..., func_type="aot")):
//   int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra)
// with the inputs first and the outputs last in params. Built by models/kernels/build.py (make kernels)
// with the helpers shared by all kernels (kernel_common.h);
// loaded by models/kernels/__init__.py. Inference only: none of them has a gradient.
#include <cstdint>

#include "kernel_common.h"

namespace {

void bias_gelu_plane(const float *__restrict x, float b, float *__restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] + b;
    float g;
    y[i] = v * normal_cdf(v, g);
  }
}

void scale_residual_plane(const float *__restrict x, const float *__restrict z, float s, float b,
                          float *__restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] + s * (z[i] + b);
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

}  // namespace

// y = gelu(x + bias[c]);  params: x [B, C, ...], bias [C], y
extern "C" int SwiftBiasGelu(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  int64_t planes, size, channels;
  plane_layout(ndims[0], shapes[0], planes, size, channels);
  parallel_for_min_elements(planes, size, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p) bias_gelu_plane(x + p * size, bias[p % channels], y + p * size, size);
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
  parallel_for_min_elements(shapes[0][0] * C, H * W, [=](int64_t s, int64_t e) {
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
  parallel_for_min_elements(shapes[0][0] * chunks, C2 * (N < kChunk ? N : kChunk), [=](int64_t s, int64_t e) {
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
  parallel_for_min_elements(planes, size, [=](int64_t s, int64_t e) {
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
  parallel_for_min_elements(planes, size, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p) {
      const int64_t c = p % channels;
      scale_residual_plane(x + p * size, z + p * size, scale[c], bias[c], y + p * size, size);
    }
  });
  return 0;
}
