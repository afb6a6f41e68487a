// src/kernels/bf16_round.h (private): float32 -> bfloat16 rounding on AVX-512 vectors, in tokenmix::simd
// (nearest even; a NaN becomes a quiet NaN), bit for bit to_bf16 of kernels/precision.h. Shared by
// convert::round_bf16_row and the bf16 attention tiles' packing (attention_tiles_bf16.cpp);
// vcvtneps2bf16 is not used because it flushes subnormal inputs to zero.
#pragma once

#include "isa_target.h"

TOKENMIX_AVX512_BF16_BEGIN
namespace tokenmix::simd {

// (Shifts and the narrowing move use their zero-masked forms under a full mask: GCC 12's unmasked
// intrinsics pass an undefined vector that -Wmaybe-uninitialized reports, GCC bug 105593.)
constexpr __mmask16 kAll = 0xffff;  // a full 16-lane mask

// 16 floats rounded, each bf16 in the low half of its 32-bit lane (the high half zero).
inline __m512i bf16_lanes(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i high = _mm512_maskz_srli_epi32(kAll, u, 16);
  const __m512i lsb = _mm512_and_si512(high, _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_maskz_srli_epi32(kAll, _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(high, _mm512_set1_epi32(0x40)));
}

// The 16 floats at x (the lanes of mask; 0 elsewhere) rounded, as 16 bf16.
inline __m256i bf16_round16(const float* x, __mmask16 mask = kAll) {
  return _mm512_maskz_cvtepi32_epi16(kAll, bf16_lanes(_mm512_maskz_loadu_ps(mask, x)));
}

}  // namespace tokenmix::simd
TOKENMIX_AVX512_BF16_END
