// tokenmix/kernels/accumulate.h: the running-context update of an online softmax, one accumulator
// row at a time (continual-inference's RetroactiveMultiheadAttention stream: each staying query row's
// context gains the entering key's value and loses the leaving one's, under a rescaled max).
#pragma once

#include <cstdint>

namespace tokenmix {

// a[e] <- f·a[e] + (w_new·u_new[e] - w_old·u_old[e])  for e < n, then, when y is not null,
// y[e] += a[e]·y_scale. a, u_new, u_old, y: n floats each (u_old may be u_new; y must not alias a).
// Each element is rounded exactly as that expression in float32 (no fused multiply-add), so the
// vector path (kernel set avx2) and rescale_accumulate_reference() agree bit for bit
// (tests/accumulate_test.cpp).
void rescale_accumulate(float* a, int64_t n, float f, const float* u_new, float w_new, const float* u_old,
                        float w_old, float* y, float y_scale);
void rescale_accumulate_reference(float* a, int64_t n, float f, const float* u_new, float w_new,
                                  const float* u_old, float w_old, float* y, float y_scale);

}  // namespace tokenmix
