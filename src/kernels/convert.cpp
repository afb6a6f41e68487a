#include "convert.h"

#include <algorithm>
#include <cmath>

#include "tokenmix/core/cpu.h"
#include "tokenmix/kernels/precision.h"
#include "bf16_round.h"
#include "isa_target.h"

namespace tokenmix::convert {

float quantize_row_reference(const float* x, int64_t n, int8_t* q) {
  float amax = 0;
  bool finite = true;
  for (int64_t k = 0; k < n; ++k) {
    amax = std::max(amax, std::fabs(x[k]));
    finite &= std::isfinite(x[k]);
  }
  if (!finite) {
    std::fill(q, q + n, int8_t{0});
    return NAN;
  }
  const float scale = amax > 0 ? amax / 127.f : 1.f, inv = 1.f / scale;
  for (int64_t k = 0; k < n; ++k) q[k] = static_cast<int8_t>(std::nearbyint(x[k] * inv));
  return scale;
}

void round_bf16_row_reference(const float* x, int64_t n, uint16_t* out) {
  for (int64_t k = 0; k < n; ++k) out[k] = to_bf16(x[k]);
}

void store_row_reference(const float* r, int64_t n, float scale, const float* bias, bool accumulate, float* out) {
  for (int64_t k = 0; k < n; ++k) {
    float v = scale * r[k];
    if (bias) v += bias[k];
    out[k] = accumulate ? out[k] + v : v;
  }
}

namespace {

TOKENMIX_AVX2_BEGIN

// Eight int32 lanes (values within int8) to eight bytes at q.
inline void store8_int8_avx2(__m256i v, int8_t* q) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_packs_epi16(w, w));
}

float quantize_row_avx2(const float* x, int64_t n, int8_t* q) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i inf_bits = _mm256_set1_epi32(0x7f800000);
  __m256 vmax = _mm256_setzero_ps();
  __m256i nonfinite = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + k), abs_mask);
    vmax = _mm256_max_ps(vmax, a);  // a NaN lane is caught below, whatever max makes of it
    nonfinite = _mm256_or_si256(nonfinite, _mm256_cmpgt_epi32(_mm256_castps_si256(a), _mm256_sub_epi32(inf_bits, _mm256_set1_epi32(1))));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, vmax);
  float amax = 0;
  for (float v : t) amax = std::max(amax, v);
  bool finite = _mm256_testz_si256(nonfinite, nonfinite);
  for (int64_t j = k; j < n; ++j) {
    amax = std::max(amax, std::fabs(x[j]));
    finite &= std::isfinite(x[j]);
  }
  if (!finite) {
    std::fill(q, q + n, int8_t{0});
    return NAN;
  }
  const float scale = amax > 0 ? amax / 127.f : 1.f, inv = 1.f / scale;
  const __m256 vinv = _mm256_set1_ps(inv);
  for (k = 0; k + 8 <= n; k += 8) {
    const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    store8_int8_avx2(_mm256_cvtps_epi32(r), q + k);
  }
  for (; k < n; ++k) q[k] = static_cast<int8_t>(std::nearbyint(x[k] * inv));
  return scale;
}

void round_bf16_row_avx2(const float* x, int64_t n, uint16_t* out) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf_bits = _mm256_set1_epi32(0x7f800000);
  const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1), quiet = _mm256_set1_epi32(0x40);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + k));
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf_bits);
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(u, 16), one))), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
    const __m256i r = _mm256_blendv_epi8(rounded, nan, is_nan);
    // 16-bit results (low halves of the lanes) packed in order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm256_castsi256_si128(packed));
  }
  for (; k < n; ++k) out[k] = to_bf16(x[k]);
}

void store_row_avx2(const float* r, int64_t n, float scale, const float* bias, bool accumulate, float* out) {
  const __m256 vs = _mm256_set1_ps(scale);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 v = _mm256_mul_ps(vs, _mm256_loadu_ps(r + k));
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + k));
    if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(out + k), v);
    _mm256_storeu_ps(out + k, v);
  }
  store_row_reference(r + k, n - k, scale, bias ? bias + k : nullptr, accumulate, out + k);
}

TOKENMIX_AVX2_END

TOKENMIX_AVX512_BF16_BEGIN

void round_bf16_row_avx512(const float* x, int64_t n, uint16_t* out) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), simd::bf16_round16(x + k));
  if (k < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - k)) - 1);
    _mm256_mask_storeu_epi16(out + k, tail, simd::bf16_round16(x + k, tail));
  }
}

TOKENMIX_AVX512_BF16_END

bool vector() { return kernel_isa() >= KernelIsa::kAvx2; }

}  // namespace

float quantize_row(const float* x, int64_t n, int8_t* q) {
  return vector() ? quantize_row_avx2(x, n, q) : quantize_row_reference(x, n, q);
}

void round_bf16_row(const float* x, int64_t n, uint16_t* out) {
  if (kernel_isa() >= KernelIsa::kAvx512Bf16)
    round_bf16_row_avx512(x, n, out);
  else
    vector() ? round_bf16_row_avx2(x, n, out) : round_bf16_row_reference(x, n, out);
}

void store_row(const float* r, int64_t n, float scale, const float* bias, bool accumulate, float* out) {
  vector() ? store_row_avx2(r, n, scale, bias, accumulate, out) : store_row_reference(r, n, scale, bias, accumulate, out);
}

}  // namespace tokenmix::convert
