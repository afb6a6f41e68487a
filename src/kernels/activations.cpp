#include "tokenmix/kernels/activations.h"

#include <cmath>

#include "tokenmix/core/cpu.h"
#include "simd_math.h"

namespace tokenmix {

namespace {
constexpr float kInvSqrt2 = 0.70710678118654752440f;

TOKENMIX_AVX2_BEGIN
// The 8-lane body; returns how many leading elements it did (n rounded down to 8).
int64_t gelu_erf_avx2(float* x, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.f), half = _mm256_set1_ps(0.5f), sign = _mm256_set1_ps(-0.f);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 z = _mm256_mul_ps(v, _mm256_set1_ps(kInvSqrt2));
    const __m256 az = _mm256_andnot_ps(sign, z);
    // erf(|z|) = 1 - t·(a1 + t·(a2 + t·(a3 + t·(a4 + t·a5))))·exp(-z²), t = 1 / (1 + p·|z|).
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, one));
    __m256 poly = _mm256_set1_ps(1.061405429f);
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
    poly = _mm256_mul_ps(poly, t);
    const __m256 e = simd::exp8(_mm256_mul_ps(_mm256_xor_ps(az, sign), az));  // exp(-z²)
    const __m256 erf_abs = _mm256_fnmadd_ps(poly, e, one);
    const __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign, z));  // sign of z
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf)));
  }
  return i;
}
TOKENMIX_AVX2_END

}  // namespace

void gelu_erf_reference(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * kInvSqrt2));
}

void gelu_erf(float* x, int64_t n) {
  const int64_t i = kernel_isa() >= KernelIsa::kAvx2 ? gelu_erf_avx2(x, n) : 0;
  gelu_erf_reference(x + i, n - i);
}

}  // namespace tokenmix
