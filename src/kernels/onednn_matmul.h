// src/kernels/onednn_matmul.h (internal): a projection y = x·Wᵀ + b on oneDNN's matmul primitive,
// the fast backend behind Linear (kernels/linear.h).
//
// Invariants: the weights are reordered once, at construction, into the blocked layout oneDNN picks
// for this CPU and precision (fp32; bf16 rounded to nearest even; int8 quantized per output feature
// with its scales kept), a layout that does not depend on the row count M, so one packed copy serves
// every call; it is never stored to a file. oneDNN's fast kernels take dense rows only, so a primitive
// is specialised on (M, accumulate, threads) for dense operands; rows that need converting (bf16,
// int8, strided) pass through scratch in blocks of 512. Primitives are created on first use and
// cached (at most 64, oldest evicted), so repeated shapes pay only a lookup. Execution is const and
// thread-safe: each call borrows an execution context (stream, memory objects, scratch) from a pool.
// Source: oneDNN 2.6 matmul (https://oneapi-src.github.io/oneDNN/v2.6/dev_guide_matmul.html).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "tokenmix/core/tensor.h"
#include "tokenmix/kernels/precision.h"

namespace tokenmix {

class OnednnMatmul {
 public:
  // weight (N, K) float32, bias (N) or empty; precision kFp32, kBf16 or kInt8 (resolved). Throws
  // Error "Linear: ..." when oneDNN cannot build a matmul of this precision on this CPU, and for int8
  // weights holding a non-finite value.
  OnednnMatmul(const Tensor& weight, const Tensor& bias, Precision precision);
  // A bf16 matmul packed straight from bfloat16 weights bf16_weight (N, K) row-major (the same packed
  // weights as from their float32 values). Throws as above.
  OnednnMatmul(const uint16_t* bf16_weight, int64_t N, int64_t K, const Tensor& bias);
  ~OnednnMatmul();
  OnednnMatmul(const OnednnMatmul&) = delete;
  OnednnMatmul& operator=(const OnednnMatmul&) = delete;

  // y (M, stride ldy) = x (M, stride ldx) · Wᵀ + b, or y += ... with accumulate. No shape checks.
  void apply(const float* x, int64_t M, int64_t ldx, float* y, int64_t ldy, bool accumulate) const;
  Precision precision() const { return precision_; }
  // oneDNN's implementation name, e.g. "brg:avx512_core_bf16".
  const std::string& impl() const { return impl_; }
  // Bytes held: the packed weights (with int8's compensation), the bias and int8's scales.
  int64_t bytes() const;

 private:
  struct State;
  // apply() on one block of rows (all of them when they are dense float32, else at most 512).
  void run_block(const float* x, int64_t M, int64_t ldx, float* y, int64_t ldy, bool accumulate) const;
  std::unique_ptr<State> s_;
  Precision precision_;
  std::string impl_;
};

}  // namespace tokenmix
