// src/kernels/simd_math.h (private): 8-lane float math shared by the AVX2 kernels (attention
// softmax, GELU), compiled for AVX2 + FMA (isa_target.h); callers keep a plain scalar path next to
// every use.
#pragma once

#include "isa_target.h"

TOKENMIX_AVX2_BEGIN
namespace tokenmix::simd {

// exp(x) for 8 lanes, about 1 ulp (max 1.05 ulp against double exp over [-87.3, 0]). Range
// reduction x = k ln2 + r with k = round(x log2 e) by the 1.5 * 2^23 rounding trick, then a
// degree-6 polynomial for exp(r) on |r| <= ln2 / 2 (minimax for relative error, 2e-9 before
// rounding; Horner, one FMA per degree) and the scale 2^k built in the exponent bits. Inputs below
// -87.34 (including -inf) give exactly 0, inputs above 88 are clamped there, NaN stays NaN.
// (Cephes' version, floor plus a degree-7 polynomial, took 25% longer per vector for the same
// accuracy; the softmax of the attention kernels spends most of its time here.)
inline __m256 exp8(__m256 x) {
  const __m256 zero_mask = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3365447504f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_set1_ps(88.f), x);  // x second: a NaN lane passes through
  const __m256 round = _mm256_set1_ps(12582912.f);            // 1.5 * 2^23
  const __m256 fk = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), round);
  // k = round(x log2 e), exact: in [-126, 127] on every lane kept (-87.34 <= x <= 88), so k + 127
  // below is a normal exponent; masked lanes may hold anything.
  const __m256 k = _mm256_sub_ps(fk, round);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);  // ln2 in two parts: exact k * hi
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.3843653617610146e-3f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.374155460023767e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1668002042040325e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666431260832346e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.999999420898744e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.00000003216545f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.f));
  // fk's low mantissa bits hold k (two's complement): shifted into the exponent field and biased.
  const __m256i e = _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(fk), 23), _mm256_set1_epi32(127 << 23));
  return _mm256_andnot_ps(zero_mask, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

// 2^x for 8 lanes to about 1e-4 relative (7.5e-5 max over [-126, 127]), for probabilities that are
// rounded to bf16 (2^-9 relative) right after: k = round(x) by the 1.5 * 2^23 rounding trick,
// r = x - k in [-0.5, 0.5], a degree-3 polynomial for 2^r (fitted for the least maximum relative
// error) and the scale 2^k built in the exponent bits. x is clamped to [-127, 127] first: at k = -127
// the exponent field is 0, so inputs <= -127 (and -inf) give exactly 0, and -127 < x < -126.5 too;
// NaN stays NaN. 11 vector operations against exp8's 15.
inline __m256 exp2_coarse8(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-127.f), x);  // x second: a NaN lane passes through
  x = _mm256_min_ps(_mm256_set1_ps(127.f), x);
  const __m256 round = _mm256_set1_ps(12582912.f);  // 1.5 * 2^23
  const __m256 fk = _mm256_add_ps(x, round);
  const __m256 r = _mm256_sub_ps(x, _mm256_sub_ps(fk, round));
  __m256 y = _mm256_set1_ps(0.055171433836221695f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.24261081218719482f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.6932609677314758f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.9999281167984009f));
  // fk's low mantissa bits hold k (two's complement): shifted into the exponent field and biased.
  const __m256i e = _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(fk), 23), _mm256_set1_epi32(127 << 23));
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// Sum of the 8 lanes.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace tokenmix::simd
TOKENMIX_AVX2_END
