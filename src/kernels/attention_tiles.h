// src/kernels/attention_tiles.h (private): the register-blocked products inside attention()'s flash
// loop, for a group of at most kTileRows query rows against one key block of one head:
//   pack_key_panels:  K (n keys) -> 16-key panels, each D x 16, transposed and zero padded
//   scores_rows:      S = scale * Q · Kᵀ            (mr x n, from the panels)
//   pack_rows:        V (n values) or Q (n queries) -> one contiguous (n, D) array
//   context_rows:     C += P · V                    (mr x D)
// With the group's scores held in L1 between the two products, the softmax of the group runs in
// between (src/kernels/attention.cpp) and no score block of the whole query tile is written.
// These are AVX2 + FMA kernels for head_dim % 8 == 0, defined only when kTilesAvailable (the build
// targets AVX2 and FMA); attention() otherwise takes its OpenBLAS path. Both are tested against
// attention_reference() in tests/attention_kernel_test.cpp.
#pragma once

#include <cstdint>

namespace tokenmix::tiles {

#if defined(__AVX2__) && defined(__FMA__)
constexpr bool kTilesAvailable = true;
#else
constexpr bool kTilesAvailable = false;
#endif

constexpr int kMicroRows = 6;   // query rows per register tile (6 x 16 accumulators = 12 ymm registers)
constexpr int kTileRows = 12;   // query rows per group (scores_rows / context_rows), whole register tiles
constexpr int kPanelKeys = 16;  // keys per packed key panel

// Floats of the panels for n keys: round_up(n, 16) * D.
inline int64_t key_panels_size(int64_t n, int64_t D) { return (n + kPanelKeys - 1) / kPanelKeys * kPanelKeys * D; }

// Kp[p][d][c] = K[(16p + c) * ld + d] for 16p + c < n, else 0. K: n rows of D floats at stride ld;
// D % 8 == 0.
void pack_key_panels(const float* K, int64_t ld, int64_t n, int64_t D, float* Kp);

// Xp[j * D + d] = X[j * ld + d] for j < n: rows of one head (values, queries) as one contiguous
// (n, D) array. Rows of a (T, E) or (T, 3E) buffer lie 2-6 KiB apart for common E, so the rows a
// kernel walks would fall into a few L1 / L2 sets.
void pack_rows(const float* X, int64_t ld, int64_t n, int64_t D, float* Xp);

// S[r * lds + j] = scale * Σ_d Q[r * ldq + d] * K_j[d] for r < mr <= kTileRows and j < round_up(n, 16);
// columns n .. round_up(n, 16) score whatever the last panel holds there (zero padding, or the next
// keys of a longer packed range) and are for the caller to ignore. lds >= round_up(n, 16).
void scores_rows(int mr, const float* Q, int64_t ldq, const float* Kp, int64_t n, int64_t D, float scale,
                 float* S, int64_t lds);

// C[r * ldc + d] += Σ_{j < n} P[r * ldp + j] * V[j * ldv + d] for r < mr <= kTileRows, d < D; D % 8 == 0.
void context_rows(int mr, const float* P, int64_t ldp, const float* V, int64_t ldv, int64_t n, int64_t D,
                  float* C, int64_t ldc);

}  // namespace tokenmix::tiles
