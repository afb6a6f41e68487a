#include "tokenmix/kernels/linear.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <limits>

#include "onednn_matmul.h"
#include "tokenmix/core/threads.h"

namespace tokenmix {

namespace {
using threshold::kSerialGemvElements;
using threshold::kThinColumns;
using threshold::kThinRowsPerThread;

void sgemm_call(bool a_transposed, const float* A, int64_t lda, const float* B, int64_t ldb, bool b_transposed,
                float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  cblas_sgemm(CblasRowMajor, a_transposed ? CblasTrans : CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

// y = alpha·op(A)·x + beta·y, A stored row-major (rows x cols), op(A) = Aᵀ when trans; y has
// (trans ? cols : rows) entries at stride incy. beta = 0 must overwrite whatever y holds (even NaN),
// as sgemm's own beta pass does, so y is cleared here and the GEMV accumulates into it.
void sgemv_call(bool trans, int64_t rows, int64_t cols, float alpha, const float* A, int64_t lda, const float* x,
                int64_t incx, float beta, float* y, int64_t incy) {
  if (beta == 0.f) {
    const int64_t n = trans ? cols : rows;
    for (int64_t i = 0; i < n; ++i) y[i * incy] = 0.f;
    beta = 1.f;
  }
  const ThreadLimit serial(rows * cols < kSerialGemvElements ? 1 : std::numeric_limits<int>::max());
  cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, static_cast<blasint>(rows), static_cast<blasint>(cols),
              alpha, A, static_cast<blasint>(lda), x, static_cast<blasint>(incx), beta, y, static_cast<blasint>(incy));
}

// The BLAS call(s) behind gemm() and gemm_tn(); K == 0 gives C = beta * C.
void sgemm(bool a_transposed, const float* A, int64_t lda, const float* B, int64_t ldb, bool b_transposed,
           float* C, int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.f ? 0.f : beta * C[m * ldc + n];
    return;
  }
  // A single row or column is a matrix-vector product: OpenBLAS' GEMM path would spend most of its
  // time packing the matrix operand.
  if (M == 1) {  // C (1 x N) = a · op(B), a = row 0 of op(A): y = op(B)ᵀ · a
    sgemv_call(!b_transposed, b_transposed ? N : K, b_transposed ? K : N, alpha, B, ldb, A, a_transposed ? lda : 1,
               beta, C, 1);
    return;
  }
  if (N == 1) {  // C (M x 1) = op(A) · b, b = column 0 of op(B)
    sgemv_call(a_transposed, a_transposed ? K : M, a_transposed ? M : K, alpha, A, lda, B, b_transposed ? 1 : ldb,
               beta, C, ldc);
    return;
  }
  // Few output columns (Fastformer's H-wide attention logits): OpenBLAS' own threads synchronise per
  // panel, so outside a parallel region the rows are split over the OpenMP threads, one
  // single-threaded GEMM per block, or, with fewer than kThinRowsPerThread rows per thread, run in
  // one single-threaded GEMM (core/threads.h). OpenBLAS runs single-threaded inside a parallel region.
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads > 1 && N <= kThinColumns) {
    if (M < kThinRowsPerThread * threads) {
      const ThreadLimit serial(1);
      sgemm_call(a_transposed, A, lda, B, ldb, b_transposed, C, ldc, M, N, K, alpha, beta);
      return;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
      const int64_t m0 = M * t / threads, m1 = M * (t + 1) / threads;
      sgemm_call(a_transposed, a_transposed ? A + m0 : A + m0 * lda, lda, B, ldb, b_transposed, C + m0 * ldc, ldc,
                 m1 - m0, N, K, alpha, beta);
    }
    return;
  }
  sgemm_call(a_transposed, A, lda, B, ldb, b_transposed, C, ldc, M, N, K, alpha, beta);
}
}  // namespace

void gemm(const float* A, int64_t lda, const float* B, int64_t ldb, bool b_transposed, float* C,
          int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  sgemm(false, A, lda, B, ldb, b_transposed, C, ldc, M, N, K, alpha, beta);
}

void gemm_tn(const float* A, int64_t lda, const float* B, int64_t ldb, bool b_transposed, float* C,
             int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha, float beta) {
  sgemm(true, A, lda, B, ldb, b_transposed, C, ldc, M, N, K, alpha, beta);
}

void gemv(const float* A, int64_t lda, bool a_transposed, const float* x, float* y, int64_t M, int64_t N,
          float alpha, float beta) {
  if (M == 0) return;
  if (N == 0) {
    for (int64_t m = 0; m < M; ++m) y[m] = beta == 0.f ? 0.f : beta * y[m];
    return;
  }
  // Row-major storage: A (M x N) NoTrans, or the stored (N x M) matrix transposed.
  sgemv_call(a_transposed, a_transposed ? N : M, a_transposed ? M : N, alpha, A, lda, x, 1, beta, y, 1);
}

void linear_raw(const float* x, int64_t rows, int64_t in_features, int64_t ldx, const float* W,
                const float* b, int64_t out_features, float* y, int64_t ldy, bool accumulate) {
  if (rows == 0 || out_features == 0) return;
  if (b) {
    // In parallel for large outputs: this pass is the first touch of a fresh output's pages.
#pragma omp parallel for schedule(static) if (rows * out_features >= threshold::kFirstTouchElements)
    for (int64_t m = 0; m < rows; ++m) {
      float* yr = y + m * ldy;
      if (accumulate)
        for (int64_t n = 0; n < out_features; ++n) yr[n] += b[n];
      else
        std::copy(b, b + out_features, yr);
    }
  }
  const float beta = (b || accumulate) ? 1.f : 0.f;
  gemm(x, ldx, W, in_features, /*b_transposed=*/true, y, ldy, rows, out_features, in_features, 1.f,
       beta);
}

Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b, const char* fn) {
  check_ndim(W, 2, fn, "weight");
  const int64_t out = W.dim(0), in = W.dim(1);
  check(x.ndim() >= 1 && x.dim(-1) == in, fn, ": input: expected last axis of size ", in, ", got shape ",
        x.shape());
  if (!b.empty()) check_shape(b, {out}, fn, "bias");
  std::vector<int64_t> d = x.shape().dims();
  d.back() = out;
  Tensor y = Tensor::uninitialized(Shape(d));
  // (rows from y: with in = 0 the output is still written, as the bias or zeros)
  linear_raw(x.data(), out ? y.numel() / out : 0, in, in, W.data(), b.empty() ? nullptr : b.data(), out,
             y.data(), out);
  return y;
}

void Linear::describe(const Shape& weight_shape) {
  check(weight_shape.ndim() == 2, "Linear: weight: expected a 2-D tensor, got shape ", weight_shape);
  out_features_ = weight_shape[0];
  in_features_ = weight_shape[1];
  if (!bias_.empty()) check_shape(bias_, {out_features_}, "Linear", "bias");
  built_ = true;
  options_.Validate("Linear");
  precision_ = resolve_precision(options_);
}

Linear::Linear(const Bf16Tensor& weight, Tensor bias, const LinearOptions& options)
    : bias_(std::move(bias)), options_(options) {
  check(weight.data != nullptr || weight.shape.numel() == 0, "Linear: weight: expected ", weight.shape.numel(),
        " bf16 values, got a Bf16Tensor without data");
  describe(weight.shape);
  if (precision_ == Precision::kBf16 && options_.backend == GemmBackend::kOnednn && weight.shape.numel() != 0) {
    packed_ = std::make_shared<const OnednnMatmul>(weight.data.get(), out_features_, in_features_, bias_);
    return;
  }
  *this = Linear(weight.to_float(), bias_, options_, KeepWeights::kPackedOnly);
}

Linear::Linear(Tensor weight, Tensor bias, const LinearOptions& options, KeepWeights keep)
    : weight_(std::move(weight)), bias_(std::move(bias)), options_(options) {
  describe(weight_.shape());
  if (options_.backend == GemmBackend::kReference) return;
  // An empty product (no rows of weights or no inputs) has nothing to pack: the reference path
  // writes its bias-or-zeros output.
  if (weight_.numel() == 0) return;
  packed_ = std::make_shared<const OnednnMatmul>(weight_, bias_, precision_);
  if (keep == KeepWeights::kPackedOnly) weight_ = Tensor{};
}

const Tensor& Linear::weight() const {
  check(!weight_.empty() || !packed_, "Linear::weight: the float32 weights (", out_features_, ", ", in_features_,
        ") were dropped once packed (a layer that reads them builds the projection with KeepWeights::kAlsoFloat32)");
  return weight_;
}

int64_t Linear::weight_bytes() const {
  const int64_t float32 = weight_.empty() ? 0 : static_cast<int64_t>(weight_.numel() * sizeof(float));
  return packed_ ? packed_->bytes() + float32 : float32 + static_cast<int64_t>(bias_.numel() * sizeof(float));
}

std::string Linear::impl() const {
  return packed_ ? "onednn " + packed_->impl() : std::string("openblas sgemm (reference)");
}

void Linear::apply(const float* x, int64_t rows, int64_t ldx, float* y, int64_t ldy, bool accumulate) const {
  if (packed_) {
    packed_->apply(x, rows, ldx, y, ldy, accumulate);
    return;
  }
  linear_raw(x, rows, in_features(), ldx, weight().data(), bias_.empty() ? nullptr : bias_.data(), out_features(),
             y, ldy, accumulate);
}

Tensor Linear::operator()(const Tensor& x, const char* fn) const {
  check(x.ndim() >= 1 && x.dim(-1) == in_features(), fn, ": input: expected last axis of size ", in_features(),
        ", got shape ", x.shape());
  std::vector<int64_t> d = x.shape().dims();
  d.back() = out_features();
  Tensor y = Tensor::uninitialized(Shape(d));
  const int64_t rows = out_features() ? y.numel() / out_features() : 0;
  apply(x.data(), rows, in_features(), y.data(), out_features());
  return y;
}

}  // namespace tokenmix
