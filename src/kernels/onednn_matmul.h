// src/kernels/onednn_matmul.h (internal): a projection y = x·Wᵀ + b on oneDNN's matmul primitive,
// the fast backend behind Linear (kernels/linear.h).
//
// Invariants: the weights are reordered once, at construction, into the blocked layout oneDNN picks
// for this CPU and precision (that layout does not depend on the row count M, so one packed copy
// serves every call; it is never stored to a file). A primitive is specialised on (M, strides,
// accumulate, threads); those are created on first use and cached (at most kMaxPrimitives, oldest
// evicted), so repeated shapes pay only a lookup. Execution is const and thread-safe: each call
// borrows its scratch (oneDNN's scratchpad, bf16 input rows) from a WorkspacePool.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "tokenmix/core/tensor.h"
#include "tokenmix/kernels/precision.h"

namespace tokenmix {

class OnednnMatmul {
 public:
  // weight (N, K) float32, bias (N) or empty; precision kFp32 or kBf16 (resolved). Throws Error
  // "Linear: ..." when oneDNN cannot build a matmul of this precision on this CPU.
  OnednnMatmul(const Tensor& weight, const Tensor& bias, Precision precision);
  ~OnednnMatmul();
  OnednnMatmul(const OnednnMatmul&) = delete;
  OnednnMatmul& operator=(const OnednnMatmul&) = delete;

  // y (M, stride ldy) = x (M, stride ldx) · Wᵀ + b, or y += ... with accumulate. No shape checks.
  void apply(const float* x, int64_t M, int64_t ldx, float* y, int64_t ldy, bool accumulate) const;
  Precision precision() const { return precision_; }
  // oneDNN's implementation name, e.g. "brg:avx512_core_bf16".
  const std::string& impl() const { return impl_; }
  // Bytes of the packed weights (and bias).
  int64_t weight_bytes() const;

 private:
  struct State;
  // apply() on M <= 512 rows (the conversions and scratch of one block).
  void run_block(const float* x, int64_t M, int64_t ldx, float* y, int64_t ldy, bool accumulate) const;
  std::unique_ptr<State> s_;
  Precision precision_;
  std::string impl_;
};

}  // namespace tokenmix
