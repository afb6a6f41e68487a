// src/layers/weights.h (internal): reading a projection's upstream weights into a Linear.
#pragma once

#include <string>

#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/linear.h"

namespace tokenmix {

// The nn.Linear stored under prefix: "<prefix>weight" (out, in) and, when bias, "<prefix>bias" (out).
// A missing or mis-shaped tensor gives an empty Linear and is reported by r.finish().
// The Linear runs as `options` say (precision, backend) and keeps the float32 weights as keep says.
inline Linear take_linear(WeightReader& r, const std::string& prefix, int64_t out, int64_t in,
                          const LinearOptions& options, bool bias = true,
                          KeepWeights keep = KeepWeights::kPackedOnly) {
  const Tensor w = r.take(prefix + "weight", Shape{out, in});
  const Tensor b = bias ? r.take(prefix + "bias", Shape{out}) : Tensor{};
  return w.empty() || (bias && b.empty()) ? Linear{} : Linear(w, b, options, keep);
}

}  // namespace tokenmix
