// The BLAS wrappers of kernels/linear.h (gemm, gemm_tn, gemv, linear_raw) against plain
// double-accumulating loops, over shapes that take each dispatch path: the GEMM, the single-row and
// single-column GEMV paths, the row split of thin GEMMs over threads, K = 0, padded strides, beta = 0
// over NaN and beta != 0.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

#include <omp.h>

#include "tokenmix/kernels/linear.h"
#include "test_util.h"

namespace tokenmix {
namespace {

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

struct GemmCase {
  int64_t M, N, K;
};

// C (M x N, ldc) = alpha * op(A) · op(B) + beta * C0 in double, from the stored layouts gemm /
// gemm_tn document.
std::vector<double> gemm_loops(bool a_t, const Tensor& A, int64_t lda, const Tensor& B, int64_t ldb, bool b_t,
                               const std::vector<float>& C0, int64_t ldc, const GemmCase& g, float alpha,
                               float beta) {
  std::vector<double> C(C0.begin(), C0.end());
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < g.K; ++k)
        s += double(a_t ? A.data()[k * lda + m] : A.data()[m * lda + k]) *
             double(b_t ? B.data()[n * ldb + k] : B.data()[k * ldb + n]);
      double& c = C[m * ldc + n];
      c = alpha * s + (beta == 0.f ? 0.0 : beta * c);
    }
  return C;
}

class GemmTest : public ::testing::TestWithParam<std::tuple<GemmCase, bool, bool, float>> {};

TEST_P(GemmTest, MatchesLoops) {
  const auto [g, a_t, b_t, beta] = GetParam();
  // Stored shapes with padded row strides (+3) so that a stride mix-up reads wrong values.
  const int64_t lda = (a_t ? g.M : g.K) + 3, ldb = (b_t ? g.K : g.N) + 3, ldc = g.N + 3;
  const Tensor A = test::random_tensor(Shape{(a_t ? g.K : g.M) + 1, lda}, 1);
  const Tensor B = test::random_tensor(Shape{(b_t ? g.N : g.K) + 1, ldb}, 2);
  const Tensor C0 = test::random_tensor(Shape{g.M, ldc}, 3);
  std::vector<float> C(C0.begin(), C0.end());
  if (beta == 0.f)  // beta = 0 must overwrite C, NaN included
    std::fill(C.begin(), C.end(), std::numeric_limits<float>::quiet_NaN());
  const float alpha = 0.75f;
  const std::vector<double> want = gemm_loops(a_t, A, lda, B, ldb, b_t, C, ldc, g, alpha, beta);
  if (a_t)
    gemm_tn(A.data(), lda, B.data(), ldb, b_t, C.data(), ldc, g.M, g.N, g.K, alpha, beta);
  else
    gemm(A.data(), lda, B.data(), ldb, b_t, C.data(), ldc, g.M, g.N, g.K, alpha, beta);
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < ldc; ++n) {
      const int64_t i = m * ldc + n;
      if (n >= g.N) {  // the padding between rows is never written
        EXPECT_TRUE(same_bits(C[i], beta == 0.f ? std::numeric_limits<float>::quiet_NaN() : C0.data()[i]))
            << "padding written at (" << m << ", " << n << ")";
        continue;
      }
      ASSERT_NEAR(C[i], want[i], 1e-5 * (1 + std::sqrt(double(g.K)))) << "at (" << m << ", " << n << ")";
    }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GemmTest,
    ::testing::Combine(::testing::Values(GemmCase{5, 7, 9}, GemmCase{1, 7, 9}, GemmCase{5, 1, 9}, GemmCase{1, 1, 9},
                                         GemmCase{4, 6, 0}, GemmCase{1, 130, 64}, GemmCase{70, 1, 33}),
                       ::testing::Bool(), ::testing::Bool(), ::testing::Values(0.f, 0.5f)),
    [](const auto& info) {
      const GemmCase g = std::get<0>(info.param);
      return "M" + std::to_string(g.M) + "_N" + std::to_string(g.N) + "_K" + std::to_string(g.K) +
             (std::get<1>(info.param) ? "_At" : "_A") + (std::get<2>(info.param) ? "_Bt" : "_B") +
             (std::get<3>(info.param) == 0.f ? "_beta0" : "_beta05");
    });

TEST(GemvTest, MatchesLoopsBothLayouts) {
  const int64_t M = 13, N = 21, lda = 25;
  for (bool a_t : {false, true}) {
    const Tensor A = test::random_tensor(Shape{a_t ? N : M, lda}, 4), x = test::random_tensor(Shape{N}, 5);
    std::vector<float> y(M, std::numeric_limits<float>::quiet_NaN());
    gemv(A.data(), lda, a_t, x.data(), y.data(), M, N, 2.f);
    for (int64_t m = 0; m < M; ++m) {
      double s = 0;
      for (int64_t n = 0; n < N; ++n) s += double(a_t ? A.data()[n * lda + m] : A.data()[m * lda + n]) * x.data()[n];
      EXPECT_NEAR(y[m], 2 * s, 1e-5) << (a_t ? "transposed " : "") << "at " << m;
    }
  }
}

TEST(GemmThinTest, RowSplitAndSerialPathsMatchLoopsAndKeepTheThreadSetting) {
  // Few output columns: with >= 1024 rows per thread gemm / gemm_tn split the rows over the OpenMP
  // threads (one single-threaded GEMM per block; 3100 rows give uneven blocks at 3 threads), with
  // fewer rows they run one single-threaded GEMM. Both transposes, beta = 0 and not; the caller's
  // thread setting is the same afterwards.
  const int saved = omp_get_max_threads();
  for (const GemmCase g : {GemmCase{3100, 5, 33}, GemmCase{300, 5, 33}})
    for (int threads : {2, 3}) {
      omp_set_num_threads(threads);
      for (bool a_t : {false, true})
        for (float beta : {0.f, 0.5f}) {
          const int64_t lda = (a_t ? g.M : g.K) + 3, ldb = g.K + 1, ldc = g.N + 2;
          const Tensor A = test::random_tensor(Shape{a_t ? g.K : g.M, lda}, 4);
          const Tensor B = test::random_tensor(Shape{g.N, ldb}, 5);
          const Tensor C0 = test::random_tensor(Shape{g.M, ldc}, 6);
          std::vector<float> C(C0.begin(), C0.end());
          const std::vector<double> want = gemm_loops(a_t, A, lda, B, ldb, true, C, ldc, g, 1.f, beta);
          if (a_t)
            gemm_tn(A.data(), lda, B.data(), ldb, true, C.data(), ldc, g.M, g.N, g.K, 1.f, beta);
          else
            gemm(A.data(), lda, B.data(), ldb, true, C.data(), ldc, g.M, g.N, g.K, 1.f, beta);
          double worst = 0;
          for (int64_t m = 0; m < g.M; ++m)
            for (int64_t n = 0; n < g.N; ++n) worst = std::max(worst, std::abs(C[m * ldc + n] - want[m * ldc + n]));
          EXPECT_LT(worst, 1e-4) << g.M << " rows, " << threads << " threads, a_transposed " << a_t << ", beta "
                                 << beta;
          EXPECT_EQ(omp_get_max_threads(), threads) << "gemm left the thread setting changed";
        }
      // A matrix-vector product below 2^20 elements runs on the calling thread and restores the
      // setting too.
      std::vector<float> y(static_cast<size_t>(g.M));
      const Tensor A = test::random_tensor(Shape{g.M, g.K}, 7), x = test::random_tensor(Shape{g.K}, 8);
      gemv(A.data(), g.K, false, x.data(), y.data(), g.M, g.K);
      EXPECT_EQ(omp_get_max_threads(), threads) << "gemv left the thread setting changed";
    }
  omp_set_num_threads(saved);
}

TEST(LinearTest, OneRowAndManyRowsAgreeWithLoops) {
  const int64_t in = 19, out = 11;
  const Tensor W = test::random_tensor(Shape{out, in}, 6), b = test::random_tensor(Shape{out}, 7);
  for (int64_t rows : {1, 6}) {
    const Tensor x = test::random_tensor(Shape{rows, in}, 8);
    for (bool with_bias : {false, true}) {
      const Tensor y = linear(x, W, with_bias ? b : Tensor(), "LinearTest");
      for (int64_t m = 0; m < rows; ++m)
        for (int64_t n = 0; n < out; ++n) {
          double s = with_bias ? b.data()[n] : 0.0;
          for (int64_t k = 0; k < in; ++k) s += double(x.at(m, k)) * W.at(n, k);
          EXPECT_NEAR(y.at(m, n), s, 1e-5) << rows << " rows, at (" << m << ", " << n << ")";
        }
    }
  }
  test::expect_error([&] { linear(Tensor(Shape{2, in + 1}), W, b, "LinearTest"); },
                     "LinearTest: input: expected last axis of size 19, got shape (2, 20)");
}

TEST(LinearTest, OutputsAreFullyWritten) {
  // linear() returns an uninitialised tensor filled by the bias pass and the GEMM: every element must
  // be written, on the parallel bias pass (rows x out >= 2^18) and with no input features (in = 0:
  // y = b, or 0 without a bias).
  const int64_t rows = 1024, in = 3, out = 300;
  const Tensor W = test::random_tensor(Shape{out, in}, 9), b = test::random_tensor(Shape{out}, 10);
  const Tensor x = test::random_tensor(Shape{rows, in}, 11);
  const Tensor y = linear(x, W, b, "LinearTest");
  double worst = 0;
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t n = 0; n < out; ++n) {
      double s = b.data()[n];
      for (int64_t k = 0; k < in; ++k) s += double(x.at(m, k)) * W.at(n, k);
      worst = std::max(worst, std::abs(y.at(m, n) - s));
    }
  EXPECT_LT(worst, 1e-5);
  const Tensor W0{Shape{4, 0}}, b0 = test::random_tensor(Shape{4}, 12), x0{Shape{2, 3, 0}};
  const Tensor yb = linear(x0, W0, b0, "LinearTest"), yz = linear(x0, W0, Tensor(), "LinearTest");
  ASSERT_EQ(yb.shape(), (Shape{2, 3, 4}));
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t n = 0; n < 4; ++n) {
      EXPECT_EQ(yb.data()[i * 4 + n], b0.data()[n]) << "in = 0 with bias, at (" << i << ", " << n << ")";
      EXPECT_EQ(yz.data()[i * 4 + n], 0.f) << "in = 0 without bias, at (" << i << ", " << n << ")";
    }
}

}  // namespace
}  // namespace tokenmix
