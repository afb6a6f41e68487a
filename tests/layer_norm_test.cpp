// tests/layer_norm_test.cpp: layer_norm (the kernel set of this process) against the plain loop of
// layer_norm_reference: rows of lengths around the vector widths, offsets that make the variance
// small against the mean, in place.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tokenmix/kernels/layer_norm.h"

namespace tokenmix {
namespace {

TEST(LayerNorm, MatchesReference) {
  std::mt19937 g(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t n : {1, 2, 7, 8, 9, 31, 512, 517}) {
    for (float offset : {0.f, 100.f}) {
      const int64_t rows = 5;
      std::vector<float> x(rows * n), w(n), b(n);
      for (auto& v : x) v = offset + nd(g);
      for (auto& v : w) v = 1.f + 0.3f * nd(g);
      for (auto& v : b) v = 0.3f * nd(g);
      std::vector<float> y(x.size()), want(x.size()), in_place = x;
      layer_norm(x.data(), rows, n, w.data(), b.data(), 1e-5f, y.data());
      layer_norm_reference(x.data(), rows, n, w.data(), b.data(), 1e-5f, want.data());
      layer_norm(in_place.data(), rows, n, w.data(), b.data(), 1e-5f, in_place.data());
      for (size_t i = 0; i < y.size(); ++i) {
        // The sums in double round alike but for their order: at most an ulp or two of the result.
        ASSERT_NEAR(y[i], want[i], 4e-7f * (1.f + std::abs(want[i]))) << "n=" << n << " offset=" << offset << " i=" << i;
        ASSERT_EQ(in_place[i], y[i]) << "in place, n=" << n << " i=" << i;
      }
    }
  }
}

}  // namespace
}  // namespace tokenmix
