// SOFT / SOFT-Norm CPU kernels, float32, for inference and training (MindSpore "aot" Custom operators).
//
// Each exported function is called as
//   int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra)
// with the inputs first and the outputs last in params. Built by models/kernels/build.py (make kernels)
// with the helpers shared by all kernels (kernel_common.h);
// loaded by models/kernels/soft.py. None of them is differentiated by MindSpore: the cells that call them
// define their backward (the Newton inverses' analytic gradient; the local convolution's input gradient is
// SoftLocalConv with the flipped kernel and its weight gradient SoftLocalConvFilterGrad).
//
//   SoftNewtonInverse(mat [..., m, m], settings [1] = (iters)) -> V [..., m, m]
//       SOFT: a = 1.8 / (max row sum)^2, P = A + 0.01 I, V = a P, then `iters` steps V <- 2V - V P V.
//   SoftNewtonInverseNorm(mat [..., m, m], settings [2] = (iters, max_halvings)) -> V [..., m, m]
//       SOFT-Norm: a = 2 / (max row sum)^2, halved while max_k sum_j |I - a A^2|_jk > 1.01 (at most
//       max_halvings times), V = a A, then `iters` Newton steps on A.
//   SoftLocalConv(x [B, H, W, D], w [h, 1, k, k]) -> y [B, H, W, D]
//       per-head k x k convolution (zero 'same' padding) of a channels-last token map: channel c belongs to
//       head c / (D / h).
//   SoftLocalConvFilterGrad(dy [B, H, W, D], x [B, H, W, D], w [h, 1, k, k]) -> dw [h, 1, k, k]
//   SoftTanhGelu(x) -> y = x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3)   (any shape)
//   SoftLayerNormGrad(x [R, D], dy [R, D], gamma [D], settings [1] = (eps)) -> dx [R, D], dgamma [D], dbeta [D]
//       the backward of layer normalisation over the last axis (row statistics recomputed from x).
//   SoftTanhGeluGrad(x, dy) -> dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)), t = tanh(u)
#include <cmath>
#ifdef __FMA__
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "kernel_common.h"

namespace {

typedef float v8 __attribute__((vector_size(32)));

// s * b + acc, fused where the target has FMA
inline v8 multiply_add(float s, v8 b, v8 acc) {
#ifdef __FMA__
  return (v8)_mm256_fmadd_ps(_mm256_set1_ps(s), (__m256)b, (__m256)acc);
#else
  return acc + s * b;
#endif
}

// The Newton kernels keep every m x m matrix in rows of mp = m rounded up to 8 floats, zero beyond column m
// (products of such matrices stay zero there), so that rows are whole 8-float vectors.
inline int64_t padded(int64_t m) { return (m + 7) / 8 * 8; }

// c = a b for two rows at a time with NV vectors a row held in registers (NV <= 7 fits 16 AVX registers).
template <int NV>
void matmul_vectors(const float *__restrict a, const float *__restrict b, float *__restrict c, int64_t m,
                    int64_t mp) {
  for (int64_t i = 0; i < m; i += 2) {
    const bool pair = i + 1 < m;
    v8 acc0[NV], acc1[NV];
    for (int v = 0; v < NV; ++v) acc0[v] = acc1[v] = v8{};
    const float *a0 = a + i * mp, *a1 = a + (pair ? i + 1 : i) * mp;
    for (int64_t k = 0; k < m; ++k) {
      const float s0 = a0[k], s1 = a1[k];
      const float *bk = b + k * mp;
      for (int v = 0; v < NV; ++v) {
        v8 bv;
        std::memcpy(&bv, bk + 8 * v, sizeof(bv));
        acc0[v] = multiply_add(s0, bv, acc0[v]);
        acc1[v] = multiply_add(s1, bv, acc1[v]);
      }
    }
    for (int v = 0; v < NV; ++v) std::memcpy(c + i * mp + 8 * v, &acc0[v], sizeof(v8));
    if (pair)
      for (int v = 0; v < NV; ++v) std::memcpy(c + (i + 1) * mp + 8 * v, &acc1[v], sizeof(v8));
  }
}

// c = a b, padded m x m matrices (row stride mp).
void matmul_square(const float *__restrict a, const float *__restrict b, float *__restrict c, int64_t m,
                   int64_t mp) {
  switch (mp / 8) {
    case 1: return matmul_vectors<1>(a, b, c, m, mp);
    case 2: return matmul_vectors<2>(a, b, c, m, mp);
    case 3: return matmul_vectors<3>(a, b, c, m, mp);
    case 4: return matmul_vectors<4>(a, b, c, m, mp);
    case 5: return matmul_vectors<5>(a, b, c, m, mp);
    case 6: return matmul_vectors<6>(a, b, c, m, mp);
    case 7: return matmul_vectors<7>(a, b, c, m, mp);
    default: break;
  }
  for (int64_t i = 0; i < m; ++i) {
    float *ci = c + i * mp;
    for (int64_t j = 0; j < mp; ++j) ci[j] = 0.0f;
    for (int64_t k = 0; k < m; ++k) {
      const float aik = a[i * mp + k];
      const float *bk = b + k * mp;
      for (int64_t j = 0; j < mp; ++j) ci[j] += aik * bk[j];
    }
  }
}

// the padded copy of an m x m matrix
void load_padded(const float *src, float *dst, int64_t m, int64_t mp) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < m; ++j) dst[i * mp + j] = src[i * m + j];
    for (int64_t j = m; j < mp; ++j) dst[i * mp + j] = 0.0f;
  }
}

void store_unpadded(const float *src, float *dst, int64_t m, int64_t mp) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) dst[i * m + j] = src[i * mp + j];
}

inline float max_row_sum(const float *a, int64_t m, int64_t mp) {
  float best = -INFINITY;
  for (int64_t i = 0; i < m; ++i) {
    float s = 0.0f;
    for (int64_t j = 0; j < m; ++j) s += a[i * mp + j];
    best = s > best ? s : best;
  }
  return best;
}

// Scratch of one thread: five padded matrices and a row.
struct Work {
  explicit Work(int64_t m) : m(m), mp(padded(m)), buf(5 * m * padded(m) + padded(m)) {}
  float *matrix(int i) { return buf.data() + i * m * mp; }
  int64_t m, mp;
  std::vector<float> buf;
};

// `iters` steps v <- 2v - v p v on padded matrices.
void newton_steps(float *__restrict v, const float *__restrict p, Work &work, int iters) {
  const int64_t m = work.m, mp = work.mp;
  float *vp = work.matrix(3), *vpv = work.matrix(4);
  for (int it = 0; it < iters; ++it) {
    matmul_square(v, p, vp, m, mp);
    matmul_square(vp, v, vpv, m, mp);
    for (int64_t i = 0; i < m * mp; ++i) v[i] = 2.0f * v[i] - vpv[i];
  }
}

void newton_inverse_plain(const float *a_in, float *v_out, Work &work, int iters) {
  const int64_t m = work.m, mp = work.mp;
  float *p = work.matrix(0), *v = work.matrix(1);
  load_padded(a_in, p, m, mp);
  const float rs = max_row_sum(p, m, mp);
  const float alpha = 1.8f / (rs * rs);
  for (int64_t i = 0; i < m; ++i) p[i * mp + i] += 0.01f;
  for (int64_t i = 0; i < m * mp; ++i) v[i] = alpha * p[i];
  newton_steps(v, p, work, iters);
  store_unpadded(v, v_out, m, mp);
}

void newton_inverse_norm(const float *a_in, float *v_out, Work &work, int iters, int max_halvings) {
  const int64_t m = work.m, mp = work.mp;
  float *a = work.matrix(0), *v = work.matrix(1), *a_sq = work.matrix(2);
  float *col = work.buf.data() + 5 * m * mp;
  load_padded(a_in, a, m, mp);
  const float rs = max_row_sum(a, m, mp);
  float alpha = 2.0f / (rs * rs);
  matmul_square(a, a, a_sq, m, mp);
  for (int h = 0; h < max_halvings; ++h) {
    for (int64_t k = 0; k < m; ++k) col[k] = 0.0f;
    for (int64_t j = 0; j < m; ++j)
      for (int64_t k = 0; k < m; ++k) col[k] += std::fabs((j == k ? 1.0f : 0.0f) - alpha * a_sq[j * mp + k]);
    float norm = -INFINITY;
    for (int64_t k = 0; k < m; ++k) norm = col[k] > norm ? col[k] : norm;
    if (norm > 1.01f) alpha = 0.5f * alpha;
  }
  for (int64_t i = 0; i < m * mp; ++i) v[i] = alpha * a[i];
  newton_steps(v, a, work, iters);
  store_unpadded(v, v_out, m, mp);
}

}  // namespace

extern "C" int SoftNewtonInverse(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *a = static_cast<const float *>(params[0]);
  const float *settings = static_cast<const float *>(params[1]);
  float *v = static_cast<float *>(params[2]);
  if (ndims[0] < 2) return 1;
  const int64_t m = shapes[0][ndims[0] - 1], count = element_count(ndims[0] - 2, shapes[0]);
  const int iters = static_cast<int>(settings[0]);
  parallel_for_min_tasks(count, 1, [=](int64_t s, int64_t e) {
    Work work(m);
    for (int64_t i = s; i < e; ++i) newton_inverse_plain(a + i * m * m, v + i * m * m, work, iters);
  });
  return 0;
}

extern "C" int SoftNewtonInverseNorm(int, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                     void *) {
  const float *a = static_cast<const float *>(params[0]);
  const float *settings = static_cast<const float *>(params[1]);
  float *v = static_cast<float *>(params[2]);
  if (ndims[0] < 2) return 1;
  const int64_t m = shapes[0][ndims[0] - 1], count = element_count(ndims[0] - 2, shapes[0]);
  const int iters = static_cast<int>(settings[0]), max_halvings = static_cast<int>(settings[1]);
  parallel_for_min_tasks(count, 1, [=](int64_t s, int64_t e) {
    Work work(m);
    for (int64_t i = s; i < e; ++i) newton_inverse_norm(a + i * m * m, v + i * m * m, work, iters, max_halvings);
  });
  return 0;
}

namespace {

// Per-channel weights [k, k, D] from per-head ones [h, 1, k, k].
std::vector<float> expand_weights(const float *w, int64_t heads, int64_t k, int64_t dim) {
  const int64_t per_head = dim / heads;
  std::vector<float> out(k * k * dim);
  for (int64_t t = 0; t < k * k; ++t)
    for (int64_t c = 0; c < dim; ++c) out[t * dim + c] = w[(c / per_head) * k * k + t];
  return out;
}

}  // namespace

extern "C" int SoftLocalConv(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  if (ndims[0] != 4 || ndims[1] != 4) return 1;
  const int64_t B = shapes[0][0], H = shapes[0][1], W = shapes[0][2], D = shapes[0][3];
  const int64_t heads = shapes[1][0], k = shapes[1][2], pad = k / 2;
  if (D % heads) return 1;
  const std::vector<float> wexp = expand_weights(w, heads, k, D);
  const float *we = wexp.data();
  parallel_for_min_tasks(B * H, 4, [=](int64_t s, int64_t e) {
    for (int64_t row = s; row < e; ++row) {
      const int64_t b = row / H, oy = row % H;
      float *out_row = y + row * W * D;
      std::memset(out_row, 0, sizeof(float) * W * D);
      for (int64_t ky = 0; ky < k; ++ky) {
        const int64_t iy = oy + ky - pad;
        if (iy < 0 || iy >= H) continue;
        const float *in_row = x + (b * H + iy) * W * D;
        for (int64_t ox = 0; ox < W; ++ox) {
          float *__restrict o = out_row + ox * D;
          for (int64_t kx = 0; kx < k; ++kx) {
            const int64_t ix = ox + kx - pad;
            if (ix < 0 || ix >= W) continue;
            const float *__restrict in = in_row + ix * D;
            const float *__restrict wt = we + (ky * k + kx) * D;
            for (int64_t c = 0; c < D; ++c) o[c] += wt[c] * in[c];
          }
        }
      }
    }
  });
  return 0;
}

extern "C" int SoftLocalConvFilterGrad(int, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                       void *) {
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  float *dw = static_cast<float *>(params[3]);
  if (ndims[0] != 4 || ndims[2] != 4) return 1;
  const int64_t B = shapes[0][0], H = shapes[0][1], W = shapes[0][2], D = shapes[0][3];
  const int64_t heads = shapes[2][0], k = shapes[2][2], pad = k / 2, per_head = D / heads;
  if (D % heads) return 1;
  // each thread sums its rows into its own [k, k, D] table; the tables are then added in a fixed order
  const int64_t rows = B * H;
  int64_t threads = max_threads();
  if (rows < threads) threads = rows < 1 ? 1 : rows;  // an empty input still gets one (zero) table
  std::vector<std::vector<float>> partial(threads, std::vector<float>(k * k * D, 0.0f));
  const int64_t per = (rows + threads - 1) / threads;
  auto body = [&](int64_t t) {
    float *acc = partial[t].data();
    const int64_t s = t * per, e = (s + per < rows) ? s + per : rows;
    for (int64_t row = s; row < e; ++row) {
      const int64_t b = row / H, oy = row % H;
      const float *g_row = dy + row * W * D;
      for (int64_t ky = 0; ky < k; ++ky) {
        const int64_t iy = oy + ky - pad;
        if (iy < 0 || iy >= H) continue;
        const float *in_row = x + (b * H + iy) * W * D;
        for (int64_t ox = 0; ox < W; ++ox) {
          const float *__restrict g = g_row + ox * D;
          for (int64_t kx = 0; kx < k; ++kx) {
            const int64_t ix = ox + kx - pad;
            if (ix < 0 || ix >= W) continue;
            const float *__restrict in = in_row + ix * D;
            float *__restrict a = acc + (ky * k + kx) * D;
            for (int64_t c = 0; c < D; ++c) a[c] += g[c] * in[c];
          }
        }
      }
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(body, t);
  body(0);
  for (auto &th : pool) th.join();
  for (int64_t i = 0; i < heads * k * k; ++i) dw[i] = 0.0f;
  for (int64_t t = 0; t < threads; ++t)
    for (int64_t tap = 0; tap < k * k; ++tap)
      for (int64_t c = 0; c < D; ++c) dw[(c / per_head) * k * k + tap] += partial[t][tap * D + c];
  return 0;
}

// ---- tanh-approximate GELU (the SOFT blocks' FFN activation): one pass forward, one pass backward ----------

namespace {

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

// tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2|u|) (absolute error ~1e-7)
inline float tanh_approx(float u) {
  const float e = exp_nonpos(-2.0f * (u >= 0.0f ? u : -u));
  const float t = (1.0f - e) / (1.0f + e);
  return u >= 0.0f ? t : -t;
}

}  // namespace

// params: x (any shape), y
extern "C" int SoftTanhGelu(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  parallel_for_each_element(element_count(ndims[0], shapes[0]), [=](int64_t i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + tanh_approx(kGeluScale * (v + kGeluCubic * v * v * v)));
  });
  return 0;
}

// params: x, dy, dx
extern "C" int SoftTanhGeluGrad(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  parallel_for_each_element(element_count(ndims[0], shapes[0]), [=](int64_t i) {
    const float v = x[i];
    const float t = tanh_approx(kGeluScale * (v + kGeluCubic * v * v * v));
    const float du = kGeluScale * (1.0f + 3.0f * kGeluCubic * v * v);
    dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
  });
  return 0;
}

// ---- layer normalisation backward: one pass over x and dy per row, partial dgamma / dbeta per thread -------

extern "C" int SoftLayerNormGrad(int, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float eps = static_cast<const float *>(params[3])[0];
  float *dx = static_cast<float *>(params[4]);
  float *dgamma = static_cast<float *>(params[5]);
  float *dbeta = static_cast<float *>(params[6]);
  const int64_t D = shapes[0][ndims[0] - 1];
  const int64_t R = D > 0 ? element_count(ndims[0], shapes[0]) / D : 0;
  const int64_t threads = threads_for_elements(R, D);
  const int64_t per = (R + threads - 1) / threads;  // run_in_ranges' range length: the range's thread is s / per
  std::vector<float> partial(static_cast<size_t>(threads * 2 * D), 0.0f);
  const float inv_d = D > 0 ? 1.0f / static_cast<float>(D) : 0.0f;
  run_in_ranges(R, threads, [&, x, dy, gamma, dx](int64_t s, int64_t e) {
    float *pg = partial.data() + (per > 0 ? s / per : 0) * 2 * D;
    float *pb = pg + D;
    std::vector<float> xhat(static_cast<size_t>(D));
    for (int64_t r = s; r < e; ++r) {
      const float *xr = x + r * D;
      const float *gr = dy + r * D;
      float mean = 0.0f;
      for (int64_t c = 0; c < D; ++c) mean += xr[c];
      mean *= inv_d;
      float var = 0.0f;
      for (int64_t c = 0; c < D; ++c) {
        const float v = xr[c] - mean;
        var += v * v;
      }
      const float rstd = 1.0f / std::sqrt(var * inv_d + eps);
      float mean_g = 0.0f, mean_gx = 0.0f;
      for (int64_t c = 0; c < D; ++c) {
        const float h = (xr[c] - mean) * rstd;
        const float g = gr[c] * gamma[c];
        xhat[c] = h;
        mean_g += g;
        mean_gx += g * h;
        pg[c] += gr[c] * h;
        pb[c] += gr[c];
      }
      mean_g *= inv_d;
      mean_gx *= inv_d;
      float *dr = dx + r * D;
      for (int64_t c = 0; c < D; ++c) dr[c] = rstd * (gr[c] * gamma[c] - mean_g - xhat[c] * mean_gx);
    }
  });
  for (int64_t c = 0; c < D; ++c) {
    float g = 0.0f, b = 0.0f;
    for (int64_t t = 0; t < threads; ++t) {
      g += partial[t * 2 * D + c];
      b += partial[t * 2 * D + D + c];
    }
    dgamma[c] = g;
    dbeta[c] = b;
  }
  return 0;
}
