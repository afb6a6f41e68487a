// src/kernels/attention_tiles.h (private): the register-blocked products inside attention()'s flash
// loop, for a group of at most kTileRows query rows against one key block of one head:
//   pack_key_panels:  K (n keys) -> 16-key panels, each D x 16, transposed and zero padded
//   scores_rows:      S = scale * Q · Kᵀ            (mr x n, from the panels)
//   pack_rows:        Q (n queries) -> one contiguous (n, D) array
//   pack_value_slices: V (n values) -> 16-feature slices, each n x 16
//   context_rows:     C += P · V                    (mr x D, from the slices)
// With the group's scores held in L1 between the two products, the softmax of the group runs in
// between (src/kernels/attention.cpp) and no score block of the whole query tile is written.
// These are AVX2 + FMA kernels for head_dim % 8 == 0, called only when available() (kernel_isa() is
// avx2); attention() otherwise takes its OpenBLAS path. Both are tested against
// attention_reference() in tests/attention_kernel_test.cpp, under each kernel set.
#pragma once

#include <cstdint>

#include "tokenmix/core/cpu.h"

namespace tokenmix::tiles {

inline bool available() { return kernel_isa() >= KernelIsa::kAvx2; }

constexpr int kMicroRows = 6;   // query rows per register tile (6 x 16 accumulators = 12 ymm registers)
constexpr int kTileRows = 12;   // query rows per group (scores_rows / context_rows), whole register tiles
constexpr int kPanelKeys = 16;  // keys per packed key panel
constexpr int kSliceFeatures = 16;  // features per packed value slice

// Floats of the panels for n keys: round_up(n, 16) * D.
inline int64_t key_panels_size(int64_t n, int64_t D) { return (n + kPanelKeys - 1) / kPanelKeys * kPanelKeys * D; }

// Kp[p][d][c] = K[(16p + c) * ld + d] for 16p + c < n, else 0. K: n rows of D floats at stride ld;
// D % 8 == 0.
void pack_key_panels(const float* K, int64_t ld, int64_t n, int64_t D, float* Kp);

// Xp[j * D + d] = X[j * ld + d] for j < n: rows of one head (queries) as one contiguous (n, D)
// array. Rows of a (T, E) or (T, 3E) buffer lie 2-6 KiB apart for common E, so the rows a kernel
// walks would fall into a few L1 / L2 sets.
void pack_rows(const float* X, int64_t ld, int64_t n, int64_t D, float* Xp);

// Floats of the value slices for n values: round_up(D, 16) * n.
inline int64_t value_slices_size(int64_t n, int64_t D) {
  return (D + kSliceFeatures - 1) / kSliceFeatures * kSliceFeatures * n;
}

// Vs[s * n * 16 + j * 16 + c] = V[j * ld + 16s + c] for 16s + c < D (a last slice of 8 features
// leaves its other 8 columns unwritten; context_rows never reads them). V: n rows of D floats at
// stride ld; D % 8 == 0. Contiguous 64-byte rows: a slice of n = 256 values is one 16 KiB run that
// stays in L1 for the group's second register tile (the same slice read from (n, D) rows 256 bytes
// apart maps to 16 of the L1's 64 sets and was evicted between the two).
void pack_value_slices(const float* V, int64_t ld, int64_t n, int64_t D, float* Vs);

// S[r * lds + j] = scale * Σ_d Q[r * ldq + d] * K_j[d] for r < mr <= kTileRows and j < round_up(n, 16);
// columns n .. round_up(n, 16) score whatever the last panel holds there (zero padding, or the next
// keys of a longer packed range) and are for the caller to ignore. lds >= round_up(n, 16).
void scores_rows(int mr, const float* Q, int64_t ldq, const float* Kp, int64_t n, int64_t D, float scale,
                 float* S, int64_t lds);

// C[r * ldc + d] += Σ_{j < n} P[r * ldp + j] * V_j[d] for r < mr <= kTileRows, d < D; D % 8 == 0.
// Vs: value slices as written by pack_value_slices, from value j = 0 of this product (slice s of V_j
// at Vs + s * slice_stride + j * 16; slice_stride = 16 * the packed range's length).
void context_rows(int mr, const float* P, int64_t ldp, const float* Vs, int64_t slice_stride, int64_t n, int64_t D,
                  float* C, int64_t ldc);


// The same products with bf16 operands (rounded to nearest even) and fp32 accumulation, by
// vdpbf16ps (AVX512-BF16), for head_dim % 16 == 0; called only when bf16::available(). Each
// 32-bit lane of a packed operand holds a pair of bf16 along the product's reduction axis:
//   key panels:   Kb[p][d/2][c] = (K[16p + c][d], K[16p + c][d + 1])     16 keys per panel, zero padded
//   query rows:   Qb[j][d]      = Q[j][d]                               (n, D) bf16
//   value slices: Vb[s][j/2][c] = (V[j][16s + c], V[j + 1][16s + c])    rows padded to an even count
// so a panel / slice offset for key j (a multiple of 16) is j * D / j * 16 bf16, as for float.
// The scores and the context stay fp32; context_rows rounds the probabilities to bf16 itself.
namespace bf16 {

inline bool available() { return kernel_isa() >= KernelIsa::kAvx512Bf16; }

// bf16 elements of the value slices for n values: round_up(D, 16) * round_up(n, 2).
inline int64_t value_slices_size(int64_t n, int64_t D) { return (D + 15) / 16 * 16 * (n + n % 2); }

// The packings above, each value rounded as to_bf16 (core/bf16.h), for D % 16 == 0: on AVX512-BF16
// vectors, bit for bit equal to the plain *_reference loops (tests/attention_kernel_test.cpp).
void pack_key_panels(const float* K, int64_t ld, int64_t n, int64_t D, uint16_t* Kb);
void pack_rows(const float* X, int64_t ld, int64_t n, int64_t D, uint16_t* Xb);
void pack_value_slices(const float* V, int64_t ld, int64_t n, int64_t D, uint16_t* Vb);
void pack_key_panels_reference(const float* K, int64_t ld, int64_t n, int64_t D, uint16_t* Kb);
void pack_rows_reference(const float* X, int64_t ld, int64_t n, int64_t D, uint16_t* Xb);
void pack_value_slices_reference(const float* V, int64_t ld, int64_t n, int64_t D, uint16_t* Vb);

// As tiles::scores_rows / context_rows (mr <= kTileRows, n <= kMaxKeys for context_rows), on the
// bf16 layouts above; slice_stride = 16 * round_up(packed range length, 2).
constexpr int64_t kMaxKeys = 256;
void scores_rows(int mr, const uint16_t* Qb, int64_t ldq, const uint16_t* Kb, int64_t n, int64_t D, float scale,
                 float* S, int64_t lds);
void context_rows(int mr, const float* P, int64_t ldp, const uint16_t* Vb, int64_t slice_stride, int64_t n,
                  int64_t D, float* C, int64_t ldc);

}  // namespace bf16

}  // namespace tokenmix::tiles
