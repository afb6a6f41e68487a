// The bf16 register tiles of attention_tiles.h (tiles::bf16): the packing (once per work item or query
// tile; plain reference loops beside it), the two products and the probabilities' rounding, on
// AVX512-BF16.
#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "tokenmix/kernels/precision.h"
#include "attention_tiles.h"
#include "bf16_round.h"
#include "isa_target.h"

namespace tokenmix::tiles::bf16 {

void pack_key_panels_reference(const float* K, int64_t ld, int64_t n, int64_t D, uint16_t* Kb) {
  for (int64_t j0 = 0; j0 < n; j0 += kPanelKeys) {
    uint16_t* panel = Kb + j0 * D;
    for (int64_t c = 0; c < kPanelKeys; ++c)
      for (int64_t d = 0; d < D; ++d)
        panel[d / 2 * 2 * kPanelKeys + 2 * c + d % 2] = j0 + c < n ? to_bf16(K[(j0 + c) * ld + d]) : 0;
  }
}

void pack_rows_reference(const float* X, int64_t ld, int64_t n, int64_t D, uint16_t* Xb) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) Xb[j * D + d] = to_bf16(X[j * ld + d]);
}

void pack_value_slices_reference(const float* V, int64_t ld, int64_t n, int64_t D, uint16_t* Vb) {
  const int64_t n2 = n + n % 2;
  for (int64_t s = 0; s * kSliceFeatures < D; ++s) {
    uint16_t* slice = Vb + s * kSliceFeatures * n2;
    for (int64_t j = 0; j < n2; ++j)
      for (int64_t c = 0; c < kSliceFeatures; ++c)
        slice[j / 2 * 2 * kSliceFeatures + 2 * c + j % 2] = j < n ? to_bf16(V[j * ld + s * kSliceFeatures + c]) : 0;
  }
}

namespace {

// A pair of bf16 as one 32-bit lane value (memcpy: no aliasing assumptions).
inline int32_t pair_at(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

TOKENMIX_AVX512_BF16_BEGIN

// Scores of MR rows against one 16-key panel: per pair of features, one panel load and MR
// broadcasts of a query pair, each into one vdpbf16ps (MR accumulators, one zmm per row).
template <int MR>
void scores_micro(const uint16_t* Q, int64_t ldq, const uint16_t* panel, int64_t D, float scale, float* S,
                  int64_t lds) {
  const __m512 vs = _mm512_set1_ps(scale);
  __m512 acc[MR];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 2) {
    const __m512bh k = (__m512bh)_mm512_loadu_si512(panel + d * kPanelKeys);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(pair_at(Q + r * ldq + d)), k);
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) _mm512_storeu_ps(S + r * lds, _mm512_mul_ps(acc[r], vs));
}

// MR rows x 16 features of the context, over the n2 / 2 pairs of values, added to C.
template <int MR>
void context_micro(const uint16_t* P, int64_t ldp, const uint16_t* slice, int64_t n2, float* C, int64_t ldc) {
  __m512 acc[MR];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n2; j += 2) {
    const __m512bh v = (__m512bh)_mm512_loadu_si512(slice + j * kSliceFeatures);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(pair_at(P + r * ldp + j)), v);
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) _mm512_storeu_ps(C + r * ldc, _mm512_add_ps(_mm512_loadu_ps(C + r * ldc), acc[r]));
}

// p[0 .. n) rounded to bf16 (nearest even) into out, zero padded to an even count.
void round_row(const float* p, int64_t n, uint16_t* out) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32)
    _mm512_storeu_si512(out + j, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + j + 16), _mm512_loadu_ps(p + j)));
  if (j < n) {
    const int64_t left = n - j;
    const __mmask16 lo = static_cast<__mmask16>(left >= 16 ? 0xffff : (1u << left) - 1);
    const __mmask16 hi = static_cast<__mmask16>(left <= 16 ? 0 : (1u << (left - 16)) - 1);
    const __m512i r = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, p + j + 16), _mm512_maskz_loadu_ps(lo, p + j));
    const int64_t even = left + left % 2;
    _mm512_mask_storeu_epi16(out + j, even >= 32 ? ~__mmask32{0} : (__mmask32{1} << even) - 1, r);
  }
}

using ScoresMicro = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, float, float*, int64_t);
using ContextMicro = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, float*, int64_t);
template <int... R>
constexpr std::array<ScoresMicro, sizeof...(R)> scores_table(std::integer_sequence<int, R...>) {
  return {scores_micro<R + 1>...};
}
template <int... R>
constexpr std::array<ContextMicro, sizeof...(R)> context_table(std::integer_sequence<int, R...>) {
  return {context_micro<R + 1>...};
}
constexpr auto kScoresMicro = scores_table(std::make_integer_sequence<int, kTileRows>());
constexpr auto kContextMicro = context_table(std::make_integer_sequence<int, kTileRows>());

using simd::bf16_lanes;
using simd::bf16_round16;
using simd::kAll;

TOKENMIX_AVX512_BF16_END

}  // namespace

TOKENMIX_AVX512_BF16_BEGIN

void pack_rows(const float* X, int64_t ld, int64_t n, int64_t D, uint16_t* Xb) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; d += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(Xb + j * D + d), bf16_round16(X + j * ld + d));
}

void pack_key_panels(const float* K, int64_t ld, int64_t n, int64_t D, uint16_t* Kb) {
  // Each key's features rounded 16 at a time (8 bf16 pairs), the pairs moved to the panel's [d / 2][c]
  // order as 32-bit values; keys past n are zero.
  for (int64_t j0 = 0; j0 < n; j0 += kPanelKeys) {
    const int64_t keys = std::min<int64_t>(kPanelKeys, n - j0);
    uint32_t* panel = reinterpret_cast<uint32_t*>(Kb + j0 * D);
    for (int64_t c = 0; c < keys; ++c)
      for (int64_t d = 0; d < D; d += 16) {
        alignas(32) uint32_t pairs[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(pairs), bf16_round16(K + (j0 + c) * ld + d));
        for (int i = 0; i < 8; ++i) panel[(d / 2 + i) * kPanelKeys + c] = pairs[i];
      }
    for (int64_t c = keys; c < kPanelKeys; ++c)
      for (int64_t p = 0; p < D / 2; ++p) panel[p * kPanelKeys + c] = 0;
  }
}

void pack_value_slices(const float* V, int64_t ld, int64_t n, int64_t D, uint16_t* Vb) {
  // A pair of values (j, j + 1) of one 16-feature slice is one 32-lane vector: value j's bf16 in
  // the low halves, value j + 1's in the high halves (zero past n).
  const int64_t n2 = n + n % 2;
  for (int64_t s = 0; s * kSliceFeatures < D; ++s) {
    uint16_t* slice = Vb + s * kSliceFeatures * n2;
    for (int64_t j = 0; j < n2; j += 2) {
      const float* v = V + j * ld + s * kSliceFeatures;
      const __m512i lo = bf16_lanes(_mm512_loadu_ps(v));
      const __m512i hi =
          j + 1 < n ? _mm512_maskz_slli_epi32(kAll, bf16_lanes(_mm512_loadu_ps(v + ld)), 16) : _mm512_setzero_si512();
      _mm512_storeu_si512(slice + j * kSliceFeatures, _mm512_or_si512(lo, hi));
    }
  }
}

// A row group is one register tile (up to 12 rows): each panel is read once per group.
void scores_rows(int mr, const uint16_t* Qb, int64_t ldq, const uint16_t* Kb, int64_t n, int64_t D, float scale,
                 float* S, int64_t lds) {
  for (int64_t p = 0; p * kPanelKeys < n; ++p)
    kScoresMicro[mr - 1](Qb, ldq, Kb + p * D * kPanelKeys, D, scale, S + p * kPanelKeys, lds);
}

void context_rows(int mr, const float* P, int64_t ldp, const uint16_t* Vb, int64_t slice_stride, int64_t n,
                  int64_t D, float* C, int64_t ldc) {
  constexpr int64_t kLd = kMaxKeys + 32;
  alignas(64) uint16_t Pb[kTileRows * kLd];
  for (int r = 0; r < mr; ++r) round_row(P + r * ldp, n, Pb + r * kLd);
  for (int64_t d = 0; d < D; d += kSliceFeatures)
    kContextMicro[mr - 1](Pb, kLd, Vb + d / kSliceFeatures * slice_stride, n + n % 2, C + d, ldc);
}

TOKENMIX_AVX512_BF16_END

}  // namespace tokenmix::tiles::bf16
