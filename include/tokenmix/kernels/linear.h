// tokenmix/kernels/linear.h: dense projections in PyTorch nn.Linear layout (the Linear type, on
// oneDNN's matmul with prepacked weights, fp32 or bf16), and the plain OpenBLAS (cblas) GEMM / GEMV
// wrappers used for products of activations and as Linear's reference path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "tokenmix/core/tensor.h"
#include "tokenmix/io/safetensors.h"  // Bf16Tensor
#include "tokenmix/kernels/precision.h"

namespace tokenmix {

// y[m, :] = x[m, :] · Wᵀ + b for m < rows.
//   x: rows x in_features, row stride ldx (>= in_features)
//   W: (out_features, in_features), contiguous (PyTorch weight layout)
//   b: (out_features) or nullptr
//   y: rows x out_features, row stride ldy (>= out_features); overwritten (accumulate = false) or
//      added to (accumulate = true; b is then added too when given).
// One gemm() (so a single row is one sgemv). No checks: callers validate shapes.
void linear_raw(const float* x, int64_t rows, int64_t in_features, int64_t ldx, const float* W,
                const float* b, int64_t out_features, float* y, int64_t ldy, bool accumulate = false);

// y (..., out_features) = x (..., in_features) · Wᵀ + b. W: (out_features, in_features); b: (out_features)
// or empty. Throws Error "<fn>: ..." naming the caller when the last axis of x is not in_features or b
// has the wrong size.
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b, const char* fn = "linear");

class OnednnMatmul;

// What a Linear keeps of the float32 weights it is built from. kPackedOnly: once packed (the oneDNN
// backend) it drops its reference to them, so a bf16 / int8 layer holds half / a quarter of the fp32
// weight bytes (the caller's tensor lives on only while the caller keeps it). kAlsoFloat32: weight()
// stays readable, for a layer whose own products read the float32 matrix too.
enum class KeepWeights { kPackedOnly, kAlsoFloat32 };

// A projection's weights in PyTorch nn.Linear layout, y = x·Wᵀ + b. Every projection of every layer
// applies its weights through it, so the GEMM and the precision are chosen in one place
// (LinearOptions): on the oneDNN backend the weights are reordered once, at construction, into the
// layout and precision oneDNN's matmul wants on this CPU (never stored); on the reference backend
// apply() is one OpenBLAS sgemm on the weights as loaded. Immutable; apply() is thread-safe.
class Linear {
 public:
  Linear() = default;
  // weight (out_features, in_features); bias (out_features) or empty (no bias). The tensors are
  // shared, not copied; weight() stays readable as keep says. Throws Error "Linear: ..." on other
  // shapes, on invalid options, and when the precision cannot run on this CPU (resolve_precision).
  explicit Linear(Tensor weight, Tensor bias = {}, const LinearOptions& options = {},
                  KeepWeights keep = KeepWeights::kPackedOnly);
  // From bfloat16 weights (out_features, in_features) as a BF16 checkpoint stores them: packed
  // straight from the bf16 values when it runs bf16 on oneDNN (no float32 copy is ever made; the
  // result equals building from weight.to_float()), else widened first and built as above with
  // KeepWeights::kPackedOnly. Throws as above, and when weight has elements but no data.
  Linear(const Bf16Tensor& weight, Tensor bias, const LinearOptions& options);

  bool empty() const { return !built_; }  // default-constructed
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  // What runs: fp32 or bf16 (never auto).
  Precision precision() const { return precision_; }
  // The GEMM implementation, e.g. "onednn brg:avx512_core_bf16" or "openblas sgemm (reference)".
  std::string impl() const;
  const LinearOptions& options() const { return options_; }
  // (out_features, in_features), float32. Throws Error "Linear::weight: ..." when they were dropped
  // once packed (KeepWeights::kPackedOnly on the oneDNN backend).
  const Tensor& weight() const;
  const Tensor& bias() const { return bias_; }  // (out_features) or empty
  // Bytes this projection holds: the packed weights and bias (oneDNN), plus the float32 weights
  // when it keeps them (the reference backend always does).
  int64_t weight_bytes() const;
  // y (rows, stride ldy) = x (rows, stride ldx) · Wᵀ + b; accumulate adds to y instead (the bias
  // too). No checks (callers validate shapes).
  void apply(const float* x, int64_t rows, int64_t ldx, float* y, int64_t ldy, bool accumulate = false) const;
  // x (..., in_features) -> (..., out_features). Throws Error "<fn>: input: ..." on a mismatch.
  Tensor operator()(const Tensor& x, const char* fn) const;

 private:
  Tensor weight_, bias_;  // weight_ empty once dropped
  int64_t out_features_ = 0, in_features_ = 0;
  bool built_ = false;
  LinearOptions options_;
  Precision precision_ = Precision::kFp32;
  std::shared_ptr<const OnednnMatmul> packed_;  // null on the reference backend (or with no weights)
  // Checks the bias and options against a (out_features, in_features) weight of this shape and
  // resolves the precision.
  void describe(const Shape& weight_shape);
};

// C (M x N, ldc) = alpha * A (M x K, lda) · op(B) + beta * C, row-major; op(B) = Bᵀ when
// b_transposed (B stored N x K), else B (stored K x N). Thin wrapper over cblas_sgemm (cblas_sgemv
// when M or N is 1). Threads: a matrix-vector product of fewer than 2^20 matrix elements runs on the
// calling thread; outside an OpenMP parallel region, a GEMM with N <= 16 runs as one single-threaded
// cblas_sgemm per block of rows, one block per thread, with at least 1024 rows per thread, and as
// one single-threaded call with fewer (waking a sleeping thread costs more than these calls take).
void gemm(const float* A, int64_t lda, const float* B, int64_t ldb, bool b_transposed, float* C,
          int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha = 1.f, float beta = 0.f);

// As gemm(), with the left operand transposed: C = alpha * Aᵀ · op(B) + beta * C, A stored K x M
// (row stride lda >= M). For contractions over the token axis (C[i, j] = Σ_s A[s, i] · B[s, j], e.g.
// HyperMixing's S = x̃ᵀ·W1 per head) where both operands are stored token-major.
void gemm_tn(const float* A, int64_t lda, const float* B, int64_t ldb, bool b_transposed, float* C,
             int64_t ldc, int64_t M, int64_t N, int64_t K, float alpha = 1.f, float beta = 0.f);

// y (M) = alpha * op(A) · x + beta * y, row-major A (M x N, lda) when !a_transposed; with
// a_transposed, A is stored (N x M, lda) and y (M) = alpha * Aᵀ · x + beta * y. x has unit stride.
// Thin wrapper over cblas_sgemv (on the calling thread below 2^20 matrix elements, as gemm()).
void gemv(const float* A, int64_t lda, bool a_transposed, const float* x, float* y, int64_t M, int64_t N,
          float alpha = 1.f, float beta = 0.f);

}  // namespace tokenmix
