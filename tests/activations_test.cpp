// tests/activations_test.cpp: the vector GELU against the std::erf reference loop.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tokenmix/kernels/activations.h"

namespace tokenmix {
namespace {

TEST(Activations, GeluErfMatchesReference) {
  // A dense sweep over [-12, 12] (erf saturates, exp(-z²) underflows), odd length (scalar tail),
  // plus signed zeros, infinities and NaN.
  std::vector<float> x;
  for (int i = -120000; i <= 120000; ++i) x.push_back(static_cast<float>(i) * 1e-4f);
  for (float v : {0.f, -0.f, 1e-30f, -1e-30f, 87.f, -87.f, INFINITY, -INFINITY, NAN}) x.push_back(v);
  std::vector<float> got = x, want = x;
  gelu_erf(got.data(), static_cast<int64_t>(got.size()));
  gelu_erf_reference(want.data(), static_cast<int64_t>(want.size()));
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << "x = " << x[i];
      continue;
    }
    if (std::isinf(want[i])) {
      EXPECT_EQ(got[i], want[i]) << "x = " << x[i];
      continue;
    }
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]) / (1.0 + std::fabs(x[i]));
    worst = std::max(worst, err);
    ASSERT_LT(err, 3e-7) << "x = " << x[i] << ": got " << got[i] << ", want " << want[i];
  }
  std::printf("[ gelu ] worst |error| / (1 + |x|) = %.3g\n", worst);
}

}  // namespace
}  // namespace tokenmix
