// tests/simd_math_test.cpp: the 8-lane exp of src/kernels/simd_math.h (the softmax of every attention
// kernel and the GELU's erf) against double-precision std::exp, in units in the last place.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "tokenmix/core/cpu.h"
#include "kernels/simd_math.h"

namespace tokenmix {
namespace {

TOKENMIX_AVX2_BEGIN
std::vector<float> exp8_of(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); i += 8) {
    alignas(32) float in[8] = {}, out[8];
    for (size_t r = 0; r < 8 && i + r < x.size(); ++r) in[r] = x[i + r];
    _mm256_store_ps(out, simd::exp8(_mm256_load_ps(in)));
    for (size_t r = 0; r < 8 && i + r < x.size(); ++r) y[i + r] = out[r];
  }
  return y;
}
TOKENMIX_AVX2_END

// |got - want| in units of the float spacing at want (normal range).
double ulps(float got, double want) {
  int e;
  std::frexp(want, &e);
  return std::fabs(got - want) / std::ldexp(1.0, e - 24);
}

TEST(SimdMath, Exp8WithinOneAndAHalfUlpExactSpecialValues) {
  if (kernel_isa() < KernelIsa::kAvx2) GTEST_SKIP() << "kernel set " << kernel_isa_name(kernel_isa());
  // Dense over the normal-result range (the softmax feeds x = s - max <= 0), some positive inputs.
  std::vector<float> x;
  for (int i = 0; i <= 8700000; ++i) x.push_back(-1e-5f * static_cast<float>(i));
  for (int i = 1; i <= 880; ++i) x.push_back(0.1f * static_cast<float>(i));
  const std::vector<float> y = exp8_of(x);
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp(static_cast<double>(x[i]));
    if (want < 1.2e-38) continue;  // subnormal results: flushed or not, see below
    const double u = ulps(y[i], want);
    worst = std::max(worst, u);
    ASSERT_LE(u, 1.5) << "exp8(" << x[i] << ") = " << y[i] << ", want " << want;
  }
  std::printf("[ exp8 ] worst error %.3f ulp\n", worst);
  const std::vector<float> special = {0.f, -0.f, -87.35f, -88.f, -1000.f, -INFINITY, 100.f, NAN};
  const std::vector<float> got = exp8_of(special);
  EXPECT_EQ(got[0], 1.f);
  EXPECT_EQ(got[1], 1.f);
  for (int i = 2; i < 6; ++i) EXPECT_EQ(got[i], 0.f) << "exp8(" << special[i] << ")";
  EXPECT_FLOAT_EQ(got[6], std::exp(88.f));  // clamped, finite
  EXPECT_TRUE(std::isnan(got[7]));
}

}  // namespace
}  // namespace tokenmix
