#include "attention_tiles.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace tokenmix::tiles {

void pack_key_panels(const float* K, int64_t ld, int64_t n, int64_t D, float* Kp) {
  for (int64_t j0 = 0; j0 < n; j0 += kPanelKeys) {
    const int64_t w = n - j0 < kPanelKeys ? n - j0 : kPanelKeys;
    float* panel = Kp + j0 * D;
    for (int64_t c = 0; c < w; ++c) {
      const float* key = K + (j0 + c) * ld;
      for (int64_t d = 0; d < D; ++d) panel[d * kPanelKeys + c] = key[d];
    }
    for (int64_t c = w; c < kPanelKeys; ++c)
      for (int64_t d = 0; d < D; ++d) panel[d * kPanelKeys + c] = 0.f;
  }
}

void pack_rows(const float* X, int64_t ld, int64_t n, int64_t D, float* Xp) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) Xp[j * D + d] = X[j * ld + d];
}

namespace {

// One 16-key panel for MR query rows: 2 x MR accumulators over the D steps, each step one pair of
// panel loads and MR broadcasts of a query element.
template <int MR>
void scores_panels(const float* Q, int64_t ldq, const float* Kp, int64_t panels, int64_t D, float scale,
                   float* S, int64_t lds) {
  const __m256 vs = _mm256_set1_ps(scale);
  for (int64_t p = 0; p < panels; ++p) {
    const float* panel = Kp + p * D * kPanelKeys;
    __m256 a0[MR], a1[MR];
    for (int r = 0; r < MR; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m256 k0 = _mm256_loadu_ps(panel + d * kPanelKeys);
      const __m256 k1 = _mm256_loadu_ps(panel + d * kPanelKeys + 8);
      for (int r = 0; r < MR; ++r) {
        const __m256 q = _mm256_broadcast_ss(Q + r * ldq + d);
        a0[r] = _mm256_fmadd_ps(q, k0, a0[r]);
        a1[r] = _mm256_fmadd_ps(q, k1, a1[r]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      _mm256_storeu_ps(S + r * lds + p * kPanelKeys, _mm256_mul_ps(a0[r], vs));
      _mm256_storeu_ps(S + r * lds + p * kPanelKeys + 8, _mm256_mul_ps(a1[r], vs));
    }
  }
}

// MR rows x 16 features (two vectors; WIDE = false: 8, one vector) of the context, accumulated in
// registers over the n keys. (Two flat accumulator arrays: GCC kept a 2-D array in registers but
// also stored it to the stack on every key.)
template <int MR, bool WIDE>
void context_slice(const float* P, int64_t ldp, const float* V, int64_t ldv, int64_t n, float* C, int64_t ldc) {
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

template <int MR>
void context_rows_mr(const float* P, int64_t ldp, const float* V, int64_t ldv, int64_t n, int64_t D, float* C,
                     int64_t ldc) {
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) context_slice<MR, true>(P, ldp, V + d, ldv, n, C + d, ldc);
  if (d < D) context_slice<MR, false>(P, ldp, V + d, ldv, n, C + d, ldc);
}

}  // namespace

void scores_rows(int mr, const float* Q, int64_t ldq, const float* Kp, int64_t n, int64_t D, float scale,
                 float* S, int64_t lds) {
  using Fn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float, float*, int64_t);
  static constexpr Fn fns[kTileRows] = {scores_panels<1>, scores_panels<2>, scores_panels<3>,
                                        scores_panels<4>, scores_panels<5>, scores_panels<6>};
  fns[mr - 1](Q, ldq, Kp, (n + kPanelKeys - 1) / kPanelKeys, D, scale, S, lds);
}

void context_rows(int mr, const float* P, int64_t ldp, const float* V, int64_t ldv, int64_t n, int64_t D,
                  float* C, int64_t ldc) {
  using Fn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t);
  static constexpr Fn fns[kTileRows] = {context_rows_mr<1>, context_rows_mr<2>, context_rows_mr<3>,
                                        context_rows_mr<4>, context_rows_mr<5>, context_rows_mr<6>};
  fns[mr - 1](P, ldp, V, ldv, n, D, C, ldc);
}

}  // namespace tokenmix::tiles
#endif
