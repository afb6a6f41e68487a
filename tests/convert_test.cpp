// tests/convert_test.cpp: the row passes around oneDNN's matmul (src/kernels/convert.h) under the
// kernel set of this process against their reference loops, bit for bit: lengths around the vector
// width; values across binades, ties of the bf16 rounding, signed zeros, denormals, infinities and
// NaN; all-zero rows; accumulate and bias on and off.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/convert.h"

namespace tokenmix {
namespace {

std::vector<float> row(int64_t n, std::mt19937& g, int special) {
  std::uniform_real_distribution<float> u(-1.f, 1.f), e(-30.f, 30.f);
  std::vector<float> x(n);
  for (auto& v : x) v = u(g) * std::exp2(e(g));
  if (special == 1 && n > 0) {  // ties and edge values
    const float edge[] = {0.f, -0.f, 1e-40f, -1e-41f, 1.00390625f, 1.01171875f, -3.0078125f, 65504.f};
    for (int64_t k = 0; k < n; ++k) x[k] = edge[k % 8];
  }
  if (special == 2 && n > 0) x[n / 2] = std::numeric_limits<float>::quiet_NaN();
  if (special == 3 && n > 0) x[n - 1] = -INFINITY;
  if (special == 4) std::fill(x.begin(), x.end(), 0.f);
  return x;
}

TEST(Convert, RowPassesMatchReferenceBitForBit) {
  std::mt19937 g(3);
  for (int64_t n : {0, 1, 7, 8, 9, 16, 33, 512}) {
    for (int special = 0; special < 5; ++special) {
      const std::vector<float> x = row(n, g, special);
      std::vector<int8_t> q(n, 5), q_ref(n, 7);
      const float s = convert::quantize_row(x.data(), n, q.data());
      const float s_ref = convert::quantize_row_reference(x.data(), n, q_ref.data());
      EXPECT_TRUE(s == s_ref || (std::isnan(s) && std::isnan(s_ref))) << "n=" << n << " special=" << special;
      EXPECT_EQ(q, q_ref) << "n=" << n << " special=" << special;
      if (special == 2 || special == 3) {
        EXPECT_EQ(q, std::vector<int8_t>(n, 0)) << "non-finite rows quantize to 0";
      }
      std::vector<uint16_t> b(n), b_ref(n);
      convert::round_bf16_row(x.data(), n, b.data());
      convert::round_bf16_row_reference(x.data(), n, b_ref.data());
      EXPECT_EQ(b, b_ref) << "n=" << n << " special=" << special;
      const std::vector<float> bias = row(n, g, 0);
      for (int variant = 0; variant < 4; ++variant) {
        const bool acc = variant & 1;
        const float* bp = variant & 2 ? bias.data() : nullptr;
        std::vector<float> out = row(n, g, 0), out_ref = out;
        convert::store_row(x.data(), n, 0.37f, bp, acc, out.data());
        convert::store_row_reference(x.data(), n, 0.37f, bp, acc, out_ref.data());
        EXPECT_TRUE(n == 0 || std::memcmp(out.data(), out_ref.data(), n * sizeof(float)) == 0)
            << "n=" << n << " special=" << special << " variant=" << variant;
      }
    }
  }
}

}  // namespace
}  // namespace tokenmix
