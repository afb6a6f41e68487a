#include "softmax_row.h"

#include <algorithm>
#include <cmath>

#include "tokenmix/core/cpu.h"
#include "simd_math.h"

namespace tokenmix::softmax {

namespace {

float row_max_plain(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

float exp_sub_sum_plain(float* x, int64_t n, float m, float* p) {
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float e = x[j] == -INFINITY ? 0.f : std::exp(x[j] - m);
    if (p != x) x[j] = 0.f;
    sum += p[j] = e;
  }
  return sum;
}

float exp2_sub_sum_coarse_plain(float* x, int64_t n, float m, float* p) {
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float e = x[j] == -INFINITY ? 0.f : std::exp2(x[j] - m);
    if (p != x) x[j] = 0.f;
    sum += p[j] = e;
  }
  return sum;
}

TOKENMIX_AVX2_BEGIN

float row_max_avx2(const float* x, int64_t n) {
  int64_t j = 0;
  __m256 vm = _mm256_set1_ps(-INFINITY);
  for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
  alignas(32) float t[8];
  _mm256_store_ps(t, vm);
  float m = -INFINITY;
  for (float v : t) m = v > m ? v : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

template <bool Base2>
inline __m256 exp_lanes_avx2(__m256 v) {
  return Base2 ? simd::exp2_coarse8(v) : simd::exp8(v);
}

// p[j] = exp8(x[j] - m), or exp2_coarse8 when Base2, and their sum.
template <bool Base2>
float exp_sub_sum_avx2(float* x, int64_t n, float m, float* p) {
  const bool clear = p != x;
  const __m256 vm = _mm256_set1_ps(m), zero = _mm256_setzero_ps();
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_lanes_avx2<Base2>(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    if (clear) _mm256_storeu_ps(x + j, zero);
    _mm256_storeu_ps(p + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (j < n) {  // the tail through the same polynomial, padded with -inf
    alignas(32) float t[8];
    for (int r = 0; r < 8; ++r) t[r] = j + r < n ? x[j + r] : -INFINITY;
    const __m256 e = exp_lanes_avx2<Base2>(_mm256_sub_ps(_mm256_load_ps(t), vm));
    _mm256_store_ps(t, e);
    for (int64_t r = 0; j + r < n; ++r) {
      if (clear) x[j + r] = 0.f;
      p[j + r] = t[r];
    }
    acc = _mm256_add_ps(acc, e);
  }
  return simd::hsum(acc);
}

TOKENMIX_AVX2_END

}  // namespace

float row_max(const float* x, int64_t n) {
  return kernel_isa() >= KernelIsa::kAvx2 ? row_max_avx2(x, n) : row_max_plain(x, n);
}

float exp_sub_sum(float* x, int64_t n, float m, float* p) {
  return kernel_isa() >= KernelIsa::kAvx2 ? exp_sub_sum_avx2<false>(x, n, m, p) : exp_sub_sum_plain(x, n, m, p);
}

float exp2_sub_sum_coarse(float* x, int64_t n, float m, float* p) {
  return kernel_isa() >= KernelIsa::kAvx2 ? exp_sub_sum_avx2<true>(x, n, m, p)
                                          : exp2_sub_sum_coarse_plain(x, n, m, p);
}

}  // namespace tokenmix::softmax
