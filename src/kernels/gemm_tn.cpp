#include "tokenmix/kernels/gemm_tn.h"

#include <cblas.h>

namespace tokenmix {

void gemm_tn(const float* A, int64_t lda, const float* B, int64_t ldb, bool b_transposed, float* C,
             int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.f ? 0.f : beta * C[m * ldc + n];
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasTrans, b_transposed ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B,
              static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace tokenmix
