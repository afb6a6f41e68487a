// src/kernels/softmax_row.h (internal): the softmax pieces of one score row, shared by every
// attention path (attention.cpp, attention_single.cpp). Each runs the kernel set of kernel_isa()
// (softmax_row.cpp: the AVX2 loops and their plain references).
#pragma once

#include <cstdint>

namespace tokenmix::softmax {

// Largest of x[0..n) (-inf for n = 0 or all -inf).
float row_max(const float* x, int64_t n);

// p[j] = exp(x[j] - m) for j < n (-inf scores give exactly 0); returns the sum. m must be finite.
// In place when p == x; otherwise x is cleared to 0 in the same pass (the flash loop then adds the
// next block's scores into it with beta = 1, which spares OpenBLAS' zeroing pass over C).
float exp_sub_sum(float* x, int64_t n, float m, float* p);

// As exp_sub_sum in base 2 to about 1e-4 relative (simd::exp2_coarse8; the plain path: std::exp2):
// p[j] = 2^(x[j] - m). For scores scaled by log2(e) whose probabilities are rounded to bf16 next.
float exp2_sub_sum_coarse(float* x, int64_t n, float m, float* p);

inline void scale_row(float* x, int64_t n, float a) {
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

}  // namespace tokenmix::softmax
