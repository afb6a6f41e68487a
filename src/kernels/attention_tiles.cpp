#include "attention_tiles.h"

#include <algorithm>

#include "isa_target.h"

TOKENMIX_AVX2_BEGIN
namespace tokenmix::tiles {

namespace {

// Transposes the 8 x 8 block held in r[0..8) (row i in r[i]) in place.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

}  // namespace

// Eight keys at a time through an 8 x 8 register transpose (D % 8 == 0); a partial group of the
// last panel element by element, zero padded.
void pack_key_panels(const float* K, int64_t ld, int64_t n, int64_t D, float* Kp) {
  for (int64_t j0 = 0; j0 < n; j0 += kPanelKeys) {
    float* panel = Kp + j0 * D;
    for (int64_t c0 = 0; c0 < kPanelKeys; c0 += 8) {
      const int64_t w = std::clamp<int64_t>(n - j0 - c0, 0, 8);
      if (w == 8) {
        const float* keys = K + (j0 + c0) * ld;
        for (int64_t d = 0; d < D; d += 8) {
          __m256 r[8];
          for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(keys + i * ld + d);
          transpose8(r);
          for (int i = 0; i < 8; ++i) _mm256_storeu_ps(panel + (d + i) * kPanelKeys + c0, r[i]);
        }
      } else {
        for (int64_t d = 0; d < D; ++d)
          for (int64_t c = 0; c < 8; ++c) panel[d * kPanelKeys + c0 + c] = c < w ? K[(j0 + c0 + c) * ld + d] : 0.f;
      }
    }
  }
}

void pack_rows(const float* X, int64_t ld, int64_t n, int64_t D, float* Xp) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) Xp[j * D + d] = X[j * ld + d];
}

void pack_value_slices(const float* V, int64_t ld, int64_t n, int64_t D, float* Vs) {
  // Row by row (each value row read once, front to back), one or two vectors per slice.
  for (int64_t j = 0; j < n; ++j) {
    const float* row = V + j * ld;
    float* out = Vs + j * kSliceFeatures;
    for (int64_t d0 = 0; d0 < D; d0 += kSliceFeatures) {
      float* dst = out + d0 * n;  // slice d0 / 16 starts at d0 * n
      _mm256_storeu_ps(dst, _mm256_loadu_ps(row + d0));
      if (d0 + 8 < D) _mm256_storeu_ps(dst + 8, _mm256_loadu_ps(row + d0 + 8));
    }
  }
}

namespace {

// The register tile: at most kMicroRows query rows, 2 x MR accumulators (12 ymm registers at MR = 6)
// plus two vector loads and one broadcast per step.

// Scores of MR rows against one 16-key panel, over the D steps: a pair of panel loads and MR
// broadcasts of a query element each.
template <int MR>
void scores_micro(const float* Q, int64_t ldq, const float* panel, int64_t D, __m256 scale, float* S,
                  int64_t lds) {
  __m256 a0[MR], a1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const __m256 k0 = _mm256_loadu_ps(panel + d * kPanelKeys);
    const __m256 k1 = _mm256_loadu_ps(panel + d * kPanelKeys + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 q = _mm256_broadcast_ss(Q + r * ldq + d);
      a0[r] = _mm256_fmadd_ps(q, k0, a0[r]);
      a1[r] = _mm256_fmadd_ps(q, k1, a1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(S + r * lds, _mm256_mul_ps(a0[r], scale));
    _mm256_storeu_ps(S + r * lds + 8, _mm256_mul_ps(a1[r], scale));
  }
}

// MR rows x 16 features (two vectors; WIDE = false: 8, one vector) of the context, accumulated in
// registers over the n keys and added to C. (Two flat accumulator arrays and unrolled row loops:
// with a 2-D array GCC kept the accumulators in registers but also stored them on every key.)
template <int MR, bool WIDE>
void context_micro(const float* P, int64_t ldp, const float* V, int64_t ldv, int64_t n, float* C, int64_t ldc) {
  __m256 a0[MR], a1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m256 v0 = _mm256_loadu_ps(V + j * ldv);
    const __m256 v1 = WIDE ? _mm256_loadu_ps(V + j * ldv + 8) : v0;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 p = _mm256_broadcast_ss(P + r * ldp + j);
      a0[r] = _mm256_fmadd_ps(p, v0, a0[r]);
      if (WIDE) a1[r] = _mm256_fmadd_ps(p, v1, a1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
    _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), a0[r]));
    if (WIDE) _mm256_storeu_ps(c + 8, _mm256_add_ps(_mm256_loadu_ps(c + 8), a1[r]));
  }
}

using ScoresMicro = void (*)(const float*, int64_t, const float*, int64_t, __m256, float*, int64_t);
constexpr ScoresMicro kScoresMicro[kMicroRows] = {scores_micro<1>, scores_micro<2>, scores_micro<3>,
                                                  scores_micro<4>, scores_micro<5>, scores_micro<6>};
using ContextMicro = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t);
constexpr ContextMicro kContextMicro[2][kMicroRows] = {
    {context_micro<1, false>, context_micro<2, false>, context_micro<3, false>, context_micro<4, false>,
     context_micro<5, false>, context_micro<6, false>},
    {context_micro<1, true>, context_micro<2, true>, context_micro<3, true>, context_micro<4, true>,
     context_micro<5, true>, context_micro<6, true>}};

}  // namespace

// Panel outer, register tiles inner: each 4 KiB panel (D = 64) is read from L2 once per group and
// from L1 by the group's later register tiles.
void scores_rows(int mr, const float* Q, int64_t ldq, const float* Kp, int64_t n, int64_t D, float scale,
                 float* S, int64_t lds) {
  const __m256 vs = _mm256_set1_ps(scale);
  for (int64_t p = 0; p * kPanelKeys < n; ++p)
    for (int r0 = 0; r0 < mr; r0 += kMicroRows)
      kScoresMicro[std::min(kMicroRows, mr - r0) - 1](Q + r0 * ldq, ldq, Kp + p * D * kPanelKeys, D, vs,
                                                      S + r0 * lds + p * kPanelKeys, lds);
}

// Feature slice outer, register tiles inner: a slice of the values (16 KiB at n = 256) is read from
// L2 once per group.
void context_rows(int mr, const float* P, int64_t ldp, const float* Vs, int64_t slice_stride, int64_t n, int64_t D,
                  float* C, int64_t ldc) {
  for (int64_t d = 0; d < D; d += kSliceFeatures)
    for (int r0 = 0; r0 < mr; r0 += kMicroRows)
      kContextMicro[d + kSliceFeatures <= D][std::min(kMicroRows, mr - r0) - 1](
          P + r0 * ldp, ldp, Vs + d / kSliceFeatures * slice_stride, kSliceFeatures, n, C + r0 * ldc + d, ldc);
}

}  // namespace tokenmix::tiles
TOKENMIX_AVX2_END
