// SwiftFormer CPU kernels for the fused inference path, float32 channels-first tensors [B, C, ...].
//
// Each exported function is a MindSpore "aot" Custom operator (ops.Custom("<lib>:<name>", ..., func_type="aot")):
//   int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra)
// with the inputs first and the outputs last in params. Built by models/kernels/build.py (make kernels);
// loaded by models/kernels/__init__.py. Inference only: none of them has a gradient.
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
