// tokenmix/kernels/activations.h: elementwise activations shared by the layers.
#pragma once

#include <cstdint>

namespace tokenmix {

// GELU, exact (erf) form as torch.nn.GELU() / F.gelu(approximate='none'), in place over x[0..n):
//   x <- 0.5 · x · (1 + erf(x / sqrt(2))).
// With AVX2 the erf is Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 on erf, so <= 1e-7·|x| on the
// result) over the shared vector exp; otherwise std::erf. gelu_erf_reference() is the plain std::erf
// loop the vector path is tested against (tests/activations_test.cpp).
void gelu_erf(float* x, int64_t n);
void gelu_erf_reference(float* x, int64_t n);

}  // namespace tokenmix
