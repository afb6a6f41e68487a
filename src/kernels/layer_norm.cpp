#include "tokenmix/kernels/layer_norm.h"

#include <cmath>

#include "tokenmix/core/cpu.h"
#include "tokenmix/core/threads.h"
#include "isa_target.h"

namespace tokenmix {

namespace {

// One row: y = (x - m) · rstd · weight + bias from the row's mean and variance (in double).
void normalize_row_plain(const float* x, int64_t n, const float* weight, const float* bias, float eps, float* y) {
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<double>(n);
  double var = 0;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= static_cast<double>(n);
  const float m = static_cast<float>(mean);
  const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * rstd * weight[i] + bias[i];
}

TOKENMIX_AVX2_BEGIN
// The same with 4-double sums and 8-float output steps (no FMA: the reference's roundings).
void normalize_row_avx2(const float* x, int64_t n, const float* weight, const float* bias, float eps, float* y) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(s0, s1));
  double mean = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; ++i) mean += x[i];
  mean /= static_cast<double>(n);
  const __m256d vm = _mm256_set1_pd(mean);
  s0 = s1 = _mm256_setzero_pd();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), vm);
    const __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), vm);
    s0 = _mm256_add_pd(s0, _mm256_mul_pd(d0, d0));
    s1 = _mm256_add_pd(s1, _mm256_mul_pd(d1, d1));
  }
  _mm256_store_pd(t, _mm256_add_pd(s0, s1));
  double var = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= static_cast<double>(n);
  const float m = static_cast<float>(mean);
  const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
  const __m256 vmf = _mm256_set1_ps(m), vr = _mm256_set1_ps(rstd);
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 c = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmf), vr), _mm256_loadu_ps(weight + i));
    _mm256_storeu_ps(y + i, _mm256_add_ps(c, _mm256_loadu_ps(bias + i)));
  }
  for (; i < n; ++i) y[i] = (x[i] - m) * rstd * weight[i] + bias[i];
}
TOKENMIX_AVX2_END

void layer_norm_rows(decltype(normalize_row_plain)* row, const float* x_all, int64_t rows, int64_t n,
                     const float* weight, const float* bias, float eps, float* y_all) {
#pragma omp parallel for schedule(static) if (rows >= threshold::kRows)
  for (int64_t t = 0; t < rows; ++t) row(x_all + t * n, n, weight, bias, eps, y_all + t * n);
}

}  // namespace

void layer_norm(const float* x, int64_t rows, int64_t n, const float* weight, const float* bias, float eps,
                float* y) {
  layer_norm_rows(kernel_isa() >= KernelIsa::kAvx2 ? normalize_row_avx2 : normalize_row_plain, x, rows, n, weight,
                  bias, eps, y);
}

void layer_norm_reference(const float* x, int64_t rows, int64_t n, const float* weight, const float* bias, float eps,
                          float* y) {
  layer_norm_rows(normalize_row_plain, x, rows, n, weight, bias, eps, y);
}

}  // namespace tokenmix
