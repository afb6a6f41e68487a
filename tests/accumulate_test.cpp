// tests/accumulate_test.cpp: rescale_accumulate (the kernel set of this process) against its plain
// reference loop, bit for bit: lengths around the vector width, with and without the output row,
// the leaving value aliasing the entering one, and values spanning many binades.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "tokenmix/kernels/accumulate.h"

namespace tokenmix {
namespace {

TEST(Accumulate, RescaleAccumulateMatchesReferenceBitForBit) {
  std::mt19937 g(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f), e(-20.f, 20.f);
  for (int64_t n : {0, 1, 7, 8, 9, 63, 512, 515}) {
    for (int variant = 0; variant < 4; ++variant) {  // bit 0: with y; bit 1: u_old aliases u_new
      std::vector<float> a(n), un(n), uo(n), y(n);
      for (int64_t i = 0; i < n; ++i) {
        a[i] = u(g) * std::exp2(e(g));
        un[i] = u(g);
        uo[i] = u(g) * 1e3f;
        y[i] = u(g);
      }
      const float* old = variant & 2 ? un.data() : uo.data();
      std::vector<float> a_ref = a, y_ref = y;
      float* yp = variant & 1 ? y.data() : nullptr;
      rescale_accumulate(a.data(), n, 0.37f, un.data(), 1.3f, old, 0.21f, yp, 0.9f);
      rescale_accumulate_reference(a_ref.data(), n, 0.37f, un.data(), 1.3f, old, 0.21f,
                                   variant & 1 ? y_ref.data() : nullptr, 0.9f);
      EXPECT_TRUE(n == 0 || std::memcmp(a.data(), a_ref.data(), n * sizeof(float)) == 0) << "n=" << n << " variant " << variant;
      EXPECT_TRUE(n == 0 || std::memcmp(y.data(), y_ref.data(), n * sizeof(float)) == 0) << "n=" << n << " variant " << variant;
    }
  }
}

}  // namespace
}  // namespace tokenmix
