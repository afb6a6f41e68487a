// tests/simd_math_test.cpp: the 8-lane exp of src/kernels/simd_math.h (the softmax of every attention
// kernel and the GELU's erf) against double-precision std::exp, in units in the last place; the coarse
// exp2 of the bf16 attention softmax in relative error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "tokenmix/core/cpu.h"
#include "kernels/simd_math.h"

namespace tokenmix {
namespace {

TOKENMIX_AVX2_BEGIN
// f over x, 8 lanes at a time (the last vector padded with zeros).
template <__m256 (*F)(__m256)>
std::vector<float> lanes8_of(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); i += 8) {
    alignas(32) float in[8] = {}, out[8];
    for (size_t r = 0; r < 8 && i + r < x.size(); ++r) in[r] = x[i + r];
    _mm256_store_ps(out, F(_mm256_load_ps(in)));
    for (size_t r = 0; r < 8 && i + r < x.size(); ++r) y[i + r] = out[r];
  }
  return y;
}
std::vector<float> exp8_of(const std::vector<float>& x) { return lanes8_of<simd::exp8>(x); }
std::vector<float> exp2_coarse8_of(const std::vector<float>& x) { return lanes8_of<simd::exp2_coarse8>(x); }
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

TEST(SimdMath, Exp2CoarseWithin1e4RelativeExactZeroBelowTheRange) {
  if (kernel_isa() < KernelIsa::kAvx2) GTEST_SKIP() << "kernel set " << kernel_isa_name(kernel_isa());
  // The bf16 attention softmax feeds x = s - max <= 0 (log2 units); some positive inputs too.
  std::vector<float> x;
  for (int i = 0; i <= 1260000; ++i) x.push_back(-1e-4f * static_cast<float>(i));
  for (int i = 1; i <= 1270; ++i) x.push_back(0.1f * static_cast<float>(i));
  const std::vector<float> y = exp2_coarse8_of(x);
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp2(static_cast<double>(x[i]));
    if (x[i] < -126.f) continue;  // the flush to 0 below, checked next
    const double rel = std::fabs(y[i] - want) / want;
    worst = std::max(worst, rel);
    ASSERT_LE(rel, 8e-5) << "exp2_coarse8(" << x[i] << ") = " << y[i] << ", want " << want;
  }
  std::printf("[ exp2_coarse8 ] worst relative error %.3g\n", worst);
  const std::vector<float> special = {-127.f, -200.f, -INFINITY, NAN, 127.f, 1000.f};
  const std::vector<float> got = exp2_coarse8_of(special);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[i], 0.f) << "exp2_coarse8(" << special[i] << ")";
  EXPECT_TRUE(std::isnan(got[3]));
  EXPECT_NEAR(got[4] / std::ldexp(1.f, 127), 1.0, 8e-5);  // clamped, finite
  EXPECT_EQ(got[5], got[4]);
}

}  // namespace
}  // namespace tokenmix
