// Helpers shared by the CPU kernels of models/kernels/*.cc (soft_cpu.cc, swiftformer_cpu.cc,
// swiftformer_train_cpu.cc): threading, element counts, the channels-first plane layout, the exact-GELU
// arithmetic and one row of the 3x3 depthwise convolution.
//
// models/kernels/build.py hashes this header together with each source that includes it, so editing it
// rebuilds every library. Everything is in an anonymous namespace: each library keeps its own copy with
// internal linkage (nothing is exported), so two libraries loaded into one process never bind to each
// other's helpers.
#ifndef MODELS_KERNELS_KERNEL_COMMON_H_
#define MODELS_KERNELS_KERNEL_COMMON_H_

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

// ---- threading ---------------------------------------------------------------------------------------------

// The threads a kernel may use: the hardware threads, clamped to 1..8.
inline int64_t max_threads() {
  const int64_t threads = static_cast<int64_t>(std::thread::hardware_concurrency());
  return threads < 1 ? 1 : (threads > 8 ? 8 : threads);
}

// Runs body(first, end) over [0, tasks) in `threads` consecutive ranges of ceil(tasks / threads) tasks, the
// first range on the calling thread; threads <= 1 runs body(0, tasks) here.
template <typename Body>
void run_in_ranges(int64_t tasks, int64_t threads, Body body) {
  if (threads <= 1) {
    body(0, tasks);
    return;
  }
  const int64_t per = (tasks + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t s = t * per, e = (s + per < tasks) ? s + per : tasks;
    if (s < e) pool.emplace_back(body, s, e);
  }
  body(0, per < tasks ? per : tasks);
  for (auto &th : pool) th.join();
}

// Runs body(first, end) over `tasks` tasks on up to max_threads() threads, at least `min_tasks_per_thread`
// tasks a thread (for tasks of much work each, such as one Newton inverse).
template <typename Body>
void parallel_for_min_tasks(int64_t tasks, int64_t min_tasks_per_thread, Body body) {
  int64_t threads = max_threads();
  const int64_t by_work = tasks / (min_tasks_per_thread < 1 ? 1 : min_tasks_per_thread);
  if (by_work < threads) threads = by_work < 1 ? 1 : by_work;
  run_in_ranges(tasks, threads, body);
}

// The threads for `count` work items of `item_size` elements each: up to max_threads(), at least 64K elements a
// thread, at most one thread per item, at least one.
inline int64_t threads_for_elements(int64_t count, int64_t item_size) {
  int64_t threads = max_threads();
  const int64_t by_work = (count * item_size) >> 16;
  if (by_work < threads) threads = by_work;
  if (count < threads) threads = count;
  return threads < 1 ? 1 : threads;
}

// Runs body(first, end) over `count` work items of `item_size` elements each on threads_for_elements() threads.
template <typename Body>
void parallel_for_min_elements(int64_t count, int64_t item_size, Body body) {
  run_in_ranges(count, threads_for_elements(count, item_size), body);
}

// Runs body(i) for every element index i in [0, n), in blocks of 4096 elements spread over the threads.
template <typename Body>
void parallel_for_each_element(int64_t n, Body body) {
  constexpr int64_t kBlock = 4096;
  parallel_for_min_elements((n + kBlock - 1) / kBlock, kBlock, [=](int64_t s, int64_t e) {
    const int64_t end = e * kBlock < n ? e * kBlock : n;
    for (int64_t i = s * kBlock; i < end; ++i) body(i);
  });
}

// ---- shapes ------------------------------------------------------------------------------------------------

// The product of the first `nd` extents of `shape` (1 for nd <= 0).
inline int64_t element_count(int nd, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) n *= shape[i];
  return n;
}

// [B, C, ...] -> B*C planes of prod(...) elements; plane p has channel p % C.
inline void plane_layout(int nd, const int64_t *shape, int64_t &planes, int64_t &size, int64_t &channels) {
  channels = nd > 1 ? shape[1] : 1;
  planes = nd > 0 ? shape[0] * channels : 1;
  size = 1;
  for (int i = 2; i < nd; ++i) size *= shape[i];
}

// ---- arithmetic --------------------------------------------------------------------------------------------

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

// ---- convolution -------------------------------------------------------------------------------------------

// one output row of a 3x3 depthwise convolution (zero padding 1): out += w0 * row[j-1] + w1 * row[j] + w2 * row[j+1]
inline void depthwise_row(float *__restrict out, const float *__restrict row, float w0, float w1, float w2,
                          int64_t W) {
  if (W == 1) {
    out[0] += w1 * row[0];
    return;
  }
  out[0] += w1 * row[0] + w2 * row[1];
  for (int64_t j = 1; j < W - 1; ++j) out[j] += w0 * row[j - 1] + w1 * row[j] + w2 * row[j + 1];
  out[W - 1] += w0 * row[W - 2] + w1 * row[W - 1];
}

}  // namespace

#endif  // MODELS_KERNELS_KERNEL_COMMON_H_
