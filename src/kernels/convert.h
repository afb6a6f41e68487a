// src/kernels/convert.h (private): the per-call row passes around oneDNN's matmul
// (onednn_matmul.cpp): input rows rounded to bf16 or quantized to int8, output rows rescaled and
// biased. Each runs the kernel set of kernel_isa() and rounds exactly as its *_reference loop (no
// fused multiply-add), so the two agree bit for bit (tests/convert_test.cpp).
#pragma once

#include <cstdint>

namespace tokenmix::convert {

// q[k] = round_to_nearest_even(x[k] / scale) with scale = max |x| / 127 (1 for an all-zero row);
// returns the scale, NaN when x holds a non-finite value (q is then 0). x ≈ scale · q.
float quantize_row(const float* x, int64_t n, int8_t* q);
float quantize_row_reference(const float* x, int64_t n, int8_t* q);

// out[k] = bf16 bits of x[k], rounded to nearest even (to_bf16 of kernels/precision.h).
void round_bf16_row(const float* x, int64_t n, uint16_t* out);
void round_bf16_row_reference(const float* x, int64_t n, uint16_t* out);

// out[k] = (accumulate ? out[k] : 0) + (scale · r[k] + bias[k]) (bias may be null: no term).
void store_row(const float* r, int64_t n, float scale, const float* bias, bool accumulate, float* out);
void store_row_reference(const float* r, int64_t n, float scale, const float* bias, bool accumulate, float* out);

}  // namespace tokenmix::convert
