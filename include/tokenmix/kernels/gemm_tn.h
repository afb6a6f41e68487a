// tokenmix/kernels/gemm_tn.h: GEMM with the left operand transposed, on OpenBLAS (cblas).
//
// Contractions over the token axis (C[i, j] = Σ_s A[s, i] · B[s, j], e.g. HyperMixing's
// S = x̃ᵀ·W1 per head, or any "sum of outer products over time") have both operands stored
// token-major. gemm() in linear.h only transposes the right operand; this one transposes the left,
// so no explicit transposed copy is needed.
#pragma once

#include <cstdint>

namespace tokenmix {

// C (M x N, ldc) = alpha * Aᵀ · op(B) + beta * C, row-major.
//   A: stored K x M (row stride lda >= M), read as its transpose (M x K);
//   op(B) = B stored K x N (ldb >= N), or Bᵀ when b_transposed (B stored N x K, ldb >= K).
// One cblas_sgemm. No checks: callers validate shapes. K == 0 gives C = beta * C.
void gemm_tn(const float* A, int64_t lda, const float* B, int64_t ldb, bool b_transposed, float* C,
             int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha = 1.f, float beta = 0.f);

}  // namespace tokenmix
