// SwiftFormer CPU kernels for the training path (forward and gradient), float32 tensors.
//
// Each exported function is a MindSpore "aot" Custom operator (ops.Custom("<lib>:<name>", ..., func_type="aot")):
//   int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra)
// with the inputs first and the outputs last in params. Built by models/kernels/build.py (make kernels)
// with the helpers shared by all kernels (kernel_common.h);
// loaded by models/kernels/__init__.py (load_training); the cells of models/swiftformer.py pair each forward
// operator with its gradient operator in a bprop.
#include <cstdint>
#include <algorithm>
#include <vector>

#include "kernel_common.h"

// y = gelu(x) = x * Phi(x) (exact GELU);  params: x (any shape), y
extern "C" int SwiftTrainGelu(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  parallel_for_each_element(element_count(ndims[0], shapes[0]), [=](int64_t i) {
    float g;
    y[i] = x[i] * normal_cdf(x[i], g);
  });
  return 0;
}

// dx = dy * gelu'(x) = dy * (Phi(x) + x * phi(x));  params: x, dy, dx
extern "C" int SwiftTrainGeluGrad(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  parallel_for_each_element(element_count(ndims[0], shapes[0]), [=](int64_t i) {
    float g;
    const float c = normal_cdf(x[i], g);
    dx[i] = dy[i] * (c + x[i] * g * 0.3989422804014327f);
  });
  return 0;
}

// y = x + scale[c] * z;  params: x [B, C, ...], z [B, C, ...], scale [C, 1, 1], y
extern "C" int SwiftTrainScaleResidual(int, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                       void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *z = static_cast<const float *>(params[1]);
  const float *scale = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  int64_t planes, size, channels;
  plane_layout(ndims[0], shapes[0], planes, size, channels);
  parallel_for_min_elements(planes, size, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p) {
      const float sc = scale[p % channels];
      const float *__restrict xp = x + p * size;
      const float *__restrict zp = z + p * size;
      float *__restrict yp = y + p * size;
      for (int64_t i = 0; i < size; ++i) yp[i] = xp[i] + sc * zp[i];
    }
  });
  return 0;
}

// The gradient of y = x + scale[c] * z with respect to z and scale (that of x is dy itself):
//   dz = scale[c] * dy,  dscale[c] = sum over b and the spatial axes of dy * z
// params: dy [B, C, ...], z [B, C, ...], scale [C, 1, 1], dz [B, C, ...], dscale [C, 1, 1]
extern "C" int SwiftTrainScaleResidualGrad(int, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                           void *) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *z = static_cast<const float *>(params[1]);
  const float *scale = static_cast<const float *>(params[2]);
  float *dz = static_cast<float *>(params[3]);
  float *dscale = static_cast<float *>(params[4]);
  int64_t planes, size, channels;
  plane_layout(ndims[0], shapes[0], planes, size, channels);
  const int64_t batch = planes / channels;
  // one work item per channel: it owns dscale[c], so no reduction across threads is needed
  parallel_for_min_elements(channels, batch * size, [=](int64_t s, int64_t e) {
    for (int64_t c = s; c < e; ++c) {
      const float sc = scale[c];
      double total = 0.0;
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t offset = (b * channels + c) * size;
        const float *__restrict dyp = dy + offset;
        const float *__restrict zp = z + offset;
        float *__restrict dzp = dz + offset;
        float partial = 0.0f;
        for (int64_t i = 0; i < size; ++i) {
          dzp[i] = sc * dyp[i];
          partial += dyp[i] * zp[i];
        }
        total += partial;
      }
      dscale[c] = static_cast<float>(total);
    }
  });
  return 0;
}

// y = 3x3 depthwise convolution of x (stride 1, zero padding 1, no bias);
// params: x [B, C, H, W], w [C, 1, 3, 3], y [B, C, H, W]. With w rotated by 180 degrees it is the input gradient.
extern "C" int SwiftTrainDepthwise3x3(int, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                      void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  if (ndims[0] != 4) return 1;
  const int64_t C = shapes[0][1], H = shapes[0][2], W = shapes[0][3];
  parallel_for_min_elements(shapes[0][0] * C, H * W, [=](int64_t s, int64_t e) {
    for (int64_t p = s; p < e; ++p) {
      const float *xp = x + p * H * W, *wp = w + (p % C) * 9;
      float *yp = y + p * H * W;
      for (int64_t i = 0; i < H; ++i) {
        float *out = yp + i * W;
        for (int64_t j = 0; j < W; ++j) out[j] = 0.0f;
        for (int64_t d = 0; d < 3; ++d) {
          const int64_t r = i + d - 1;
          if (r >= 0 && r < H) depthwise_row(out, xp + r * W, wp[3 * d], wp[3 * d + 1], wp[3 * d + 2], W);
        }
      }
    }
  });
  return 0;
}

// The filter gradient of SwiftTrainDepthwise3x3: dw[c, 0, d, e] = sum over b, i, j of dy[b, c, i, j] * x[b, c, i+d-1, j+e-1]
// (zero outside x). params: dy [B, C, H, W], x [B, C, H, W], w [C, 1, 3, 3] (only its shape is read), dw [C, 1, 3, 3]
extern "C" int SwiftTrainDepthwise3x3FilterGrad(int, void **params, int *ndims, int64_t **shapes, const char **,
                                                void *, void *) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  float *dw = static_cast<float *>(params[3]);
  if (ndims[0] != 4) return 1;
  const int64_t B = shapes[0][0], C = shapes[0][1], H = shapes[0][2], W = shapes[0][3];
  parallel_for_min_elements(C, B * H * W * 9, [=](int64_t s, int64_t e) {
    std::vector<float> acc(9 * W);  // per tap, a running sum for every column (vectorises without reordering)
    for (int64_t c = s; c < e; ++c) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t b = 0; b < B; ++b) {
        const float *dyp = dy + (b * C + c) * H * W, *xp = x + (b * C + c) * H * W;
        for (int64_t d = 0; d < 3; ++d) {
          const int64_t i_lo = d == 0 ? 1 : 0, i_hi = d == 2 ? H - 1 : H;  // rows i with i+d-1 inside x
          for (int64_t i = i_lo; i < i_hi; ++i) {
            const float *__restrict g = dyp + i * W;
            const float *__restrict row = xp + (i + d - 1) * W;
            float *__restrict a0 = acc.data() + (3 * d) * W;
            float *__restrict a1 = a0 + W;
            float *__restrict a2 = a1 + W;
            for (int64_t j = 1; j < W; ++j) a0[j] += g[j] * row[j - 1];
            for (int64_t j = 0; j < W; ++j) a1[j] += g[j] * row[j];
            for (int64_t j = 0; j + 1 < W; ++j) a2[j] += g[j] * row[j + 1];
          }
        }
      }
      for (int64_t tap = 0; tap < 9; ++tap) {
        double total = 0.0;
        for (int64_t j = 0; j < W; ++j) total += acc[tap * W + j];
        dw[c * 9 + tap] = static_cast<float>(total);
      }
    }
  });
  return 0;
}
