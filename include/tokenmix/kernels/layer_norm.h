// tokenmix/kernels/layer_norm.h: LayerNorm over the last axis, as torch.nn.LayerNorm (float32).
#pragma once

#include <cstdint>

namespace tokenmix {

// y (rows, n) = (x - mean) / sqrt(var + eps) · weight + bias per row of x (rows, n), with the mean
// and the biased variance of the row summed in double (so the result hardly depends on the
// summation order); weight and bias (n). Rows run in parallel from threshold::kRows rows. y may be x.
// The kernel set avx2 sums 4 doubles per step; layer_norm_reference() is the plain loop it is tested
// against (tests/layer_norm_test.cpp).
void layer_norm(const float* x, int64_t rows, int64_t n, const float* weight, const float* bias, float eps,
                float* y);
void layer_norm_reference(const float* x, int64_t rows, int64_t n, const float* weight, const float* bias, float eps,
                          float* y);

}  // namespace tokenmix
