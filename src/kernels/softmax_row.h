// src/kernels/softmax_row.h (internal): the softmax pieces of one score row, shared by every
// attention path (attention.cpp, attention_single.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd_math.h"

namespace tokenmix::softmax {

#if defined(__AVX2__) && defined(__FMA__)
using simd::exp8;
using simd::hsum;
#endif

// Largest of x[0..n) (-inf for n = 0 or all -inf).
inline float row_max(const float* x, int64_t n) {
  int64_t j = 0;
  float m = -INFINITY;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 vm = _mm256_set1_ps(-INFINITY);
  for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
  alignas(32) float t[8];
  _mm256_store_ps(t, vm);
  for (float v : t) m = std::max(m, v);
#endif
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// p[j] = exp(x[j] - m) for j < n (-inf scores give exactly 0); returns the sum. m must be finite.
// In place when p == x; otherwise x is cleared to 0 in the same pass (the flash loop then adds the
// next block's scores into it with beta = 1, which spares OpenBLAS' zeroing pass over C).
inline float exp_sub_sum(float* x, int64_t n, float m, float* p) {
#if defined(__AVX2__) && defined(__FMA__)
  const bool clear = p != x;
  const __m256 vm = _mm256_set1_ps(m), zero = _mm256_setzero_ps();
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    if (clear) _mm256_storeu_ps(x + j, zero);
    _mm256_storeu_ps(p + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  if (j < n) {  // the tail through the same polynomial, padded with -inf
    alignas(32) float t[8];
    for (int r = 0; r < 8; ++r) t[r] = j + r < n ? x[j + r] : -INFINITY;
    const __m256 e = exp8(_mm256_sub_ps(_mm256_load_ps(t), vm));
    _mm256_store_ps(t, e);
    for (int64_t r = 0; j + r < n; ++r) {
      if (clear) x[j + r] = 0.f;
      p[j + r] = t[r];
    }
    acc = _mm256_add_ps(acc, e);
  }
  return hsum(acc);
#else
  float sum = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float e = x[j] == -INFINITY ? 0.f : std::exp(x[j] - m);
    if (p != x) x[j] = 0.f;
    sum += p[j] = e;
  }
  return sum;
#endif
}

inline void scale_row(float* x, int64_t n, float a) {
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

}  // namespace tokenmix::softmax
