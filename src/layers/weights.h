// src/layers/weights.h (internal): reading a projection's upstream weights into a Linear.
#pragma once

#include <string>

#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/kernels/permute.h"

namespace tokenmix {

// A projection's weight as the checkpoint stores it: its bfloat16 values (a BF16 tensor, kept so when
// the Linear will not read float32 weights: a bf16 Linear then packs it without a float32 copy), or
// float32. Both empty when the key is missing or mis-shaped (reported by WeightReader::finish()).
struct StoredWeight {
  Tensor f32;
  Bf16Tensor bf16;
  bool empty() const { return f32.empty() && bf16.empty(); }
  // Rows [start, start + length) (e.g. one of q / k / v in a packed (3E, E) in_proj_weight).
  StoredWeight narrow(int64_t start, int64_t length) const {
    return bf16.empty() ? StoredWeight{f32.narrow(start, length), {}} : StoredWeight{{}, bf16.narrow(start, length)};
  }
  // A new (in, out) weight holding this (out, in) one transposed.
  StoredWeight transposed() const {
    return bf16.empty() ? StoredWeight{permute(f32, {1, 0}), {}} : StoredWeight{{}, bf16.transposed()};
  }
  Linear linear(const Tensor& bias, const LinearOptions& options, KeepWeights keep = KeepWeights::kPackedOnly) const {
    return bf16.empty() ? Linear(f32, bias, options, keep) : Linear(bf16, bias, options);
  }
};

// The weight under key with this shape; BF16 stays bfloat16 unless keep asks for float32.
inline StoredWeight take_weight(WeightReader& r, const std::string& key, const Shape& shape,
                                KeepWeights keep = KeepWeights::kPackedOnly) {
  if (keep == KeepWeights::kPackedOnly)
    if (const Bf16Tensor* w = r.take_bf16(key, shape)) return {{}, *w};
  return {r.take(key, shape), {}};
}

// The nn.Linear stored under prefix: "<prefix>weight" (out, in) and, when bias, "<prefix>bias" (out).
// A missing or mis-shaped tensor gives an empty Linear and is reported by r.finish().
// The Linear runs as `options` say (precision, backend) and keeps the float32 weights as keep says.
inline Linear take_linear(WeightReader& r, const std::string& prefix, int64_t out, int64_t in,
                          const LinearOptions& options, bool bias = true,
                          KeepWeights keep = KeepWeights::kPackedOnly) {
  const StoredWeight w = take_weight(r, prefix + "weight", Shape{out, in}, keep);
  const Tensor b = bias ? r.take(prefix + "bias", Shape{out}) : Tensor{};
  return w.empty() || (bias && b.empty()) ? Linear{} : w.linear(b, options, keep);
}

}  // namespace tokenmix
