// Linear's oneDNN backend (prepacked weights, fp32 and bf16) against its reference path (OpenBLAS on
// the weights as loaded): every combination of bias, accumulate, padded strides, row counts that
// take different primitives (1, a few, many), thin outputs, calls inside a parallel region and
// repeated shapes (the primitive cache). bf16 is compared with the reference run on bf16-rounded
// weights and inputs (the same numbers, float32 accumulation), so only the summation order differs.
#include <omp.h>

#include <vector>

#include "tokenmix/kernels/linear.h"
#include "test_util.h"

namespace tokenmix {
namespace {

LinearOptions onednn(Precision p) { return {p, GemmBackend::kOnednn}; }
const LinearOptions kReference{Precision::kFp32, GemmBackend::kReference};

// Whether this CPU runs precision p (resolve_precision refuses it otherwise).
bool cpu_has_bf16() { return test::cpu_runs(Precision::kBf16); }

Tensor rounded_bf16(const Tensor& t) {
  Tensor r = t.clone();
  for (float& v : r) v = from_bf16(to_bf16(v));
  return r;
}

struct Shape3 {
  int64_t M, N, K;
};

// y over a padded output (stride N + 3, the pad filled with a sentinel that must survive) from x with
// stride K + 5, through Linear `lin`, starting from y0 (accumulate) or garbage.
std::vector<float> run(const Linear& lin, const Tensor& x, int64_t M, bool accumulate, const std::vector<float>& y0) {
  const int64_t N = lin.out_features(), K = lin.in_features();
  std::vector<float> xp(M * (K + 5), -7.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xp[m * (K + 5) + k] = x.data()[m * K + k];
  std::vector<float> y = y0;
  lin.apply(xp.data(), M, K + 5, y.data(), N + 3, accumulate);
  return y;
}

void compare(Precision p, const Shape3& s, bool bias, bool accumulate, double tol) {
  SCOPED_TRACE(::testing::Message() << precision_name(p) << " M=" << s.M << " N=" << s.N << " K=" << s.K
                                    << " bias=" << bias << " accumulate=" << accumulate);
  const Tensor W = test::random_tensor(Shape{s.N, s.K}, 1), b = bias ? test::random_tensor(Shape{s.N}, 2) : Tensor{};
  const Tensor x = test::random_tensor(Shape{s.M, s.K}, 3);
  const Linear fast(W, b, onednn(p));
  const bool bf16 = p == Precision::kBf16;
  const Linear ref(bf16 ? rounded_bf16(W) : W, b, kReference);
  const Tensor xr = bf16 ? rounded_bf16(x) : x;
  std::vector<float> y0(s.M * (s.N + 3));
  for (size_t i = 0; i < y0.size(); ++i) y0[i] = (i % (s.N + 3)) >= static_cast<size_t>(s.N) ? 1234.5f : 0.25f * (i % 7);
  const std::vector<float> got = run(fast, x, s.M, accumulate, y0), want = run(ref, xr, s.M, accumulate, y0);
  EXPECT_EQ(fast.precision(), p);
  for (int64_t m = 0; m < s.M; ++m)
    for (int64_t n = 0; n < s.N + 3; ++n) {
      const float g = got[m * (s.N + 3) + n], w = want[m * (s.N + 3) + n];
      if (n >= s.N) {
        ASSERT_EQ(g, 1234.5f) << "row padding overwritten at " << m << ", " << n;
      } else {
        ASSERT_NEAR(g, w, tol * (1.0 + std::abs(w))) << "at " << m << ", " << n;
      }
    }
}

const std::vector<Shape3> kShapes = {{1, 24, 16}, {3, 8, 40}, {17, 33, 19}, {64, 4, 64}, {300, 96, 32}, {5, 1, 7}};

TEST(LinearBackend, Fp32MatchesReference) {
  for (const Shape3& s : kShapes)
    for (bool bias : {false, true})
      for (bool acc : {false, true}) compare(Precision::kFp32, s, bias, acc, 1e-5);
}

TEST(LinearBackend, Bf16MatchesReferenceOnRoundedOperands) {
  if (!cpu_has_bf16()) GTEST_SKIP() << "no bf16 arithmetic on this CPU (PrecisionTest covers the error)";
  for (const Shape3& s : kShapes)
    for (bool bias : {false, true})
      for (bool acc : {false, true}) compare(Precision::kBf16, s, bias, acc, 1e-5);
}

TEST(LinearBackend, InsideAParallelRegionAndRepeatedShapes) {
  const Tensor W = test::random_tensor(Shape{40, 24}, 4), b = test::random_tensor(Shape{40}, 5);
  const Linear fast(W, b, onednn(Precision::kFp32)), ref(W, b, kReference);
  const Tensor x = test::random_tensor(Shape{8, 24}, 6);
  const Tensor want = ref(x, "test");
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<Tensor> got(4);
#pragma omp parallel for num_threads(2)
    for (int i = 0; i < 4; ++i) got[i] = fast(x, "test");
    for (const Tensor& g : got) EXPECT_TRUE(test::all_close(g, want, 1e-5, 1e-5));
    EXPECT_TRUE(test::all_close(fast(x, "test"), want, 1e-5, 1e-5));
  }
}

TEST(LinearBackend, RowViewsAndEmptyShapes) {
  const Tensor W = test::random_tensor(Shape{12, 6}, 7), b = test::random_tensor(Shape{12}, 8);
  const Linear part(W.narrow(4, 5), b.narrow(4, 5), onednn(Precision::kFp32)),
      ref(W.narrow(4, 5), b.narrow(4, 5), kReference);
  const Tensor x = test::random_tensor(Shape{2, 3, 6}, 9);
  EXPECT_TRUE(test::all_close(part(x, "test"), ref(x, "test"), 1e-5, 1e-5));
  EXPECT_EQ(part.options().backend, GemmBackend::kOnednn);
  // No input features: the output is the bias.
  const Linear none(Tensor(Shape{3, 0}), test::random_tensor(Shape{3}, 10), onednn(Precision::kFp32));
  const Tensor y = none(Tensor(Shape{2, 0}), "test");
  for (int64_t m = 0; m < 2; ++m)
    for (int64_t n = 0; n < 3; ++n) EXPECT_EQ(y.data()[m * 3 + n], none.bias().data()[n]);
}

TEST(LinearBackend, PackedWeightsAloneHoldTheirPrecisionsBytes) {
  // Once packed, a Linear drops the float32 weights unless asked to keep them: a bf16 projection
  // holds half, an int8 one a quarter of the float32 bytes (plus per-feature bias, scales and
  // oneDNN's int8 compensation).
  const int64_t N = 512, K = 512, fp32_bytes = N * K * 4;
  const Tensor W = test::random_tensor(Shape{N, K}, 11), b = test::random_tensor(Shape{N}, 12);
  const Linear ref(W, b, kReference);
  EXPECT_EQ(ref.weight_bytes(), fp32_bytes + N * 4);
  EXPECT_EQ(ref.weight().data(), W.data());
  const std::pair<Precision, double> cases[] = {{Precision::kFp32, 1.0}, {Precision::kBf16, 0.5}, {Precision::kInt8, 0.25}};
  for (const auto& [p, fraction] : cases) {
    if (!test::cpu_runs(p)) continue;
    const Linear lean(W, b, onednn(p));
    EXPECT_GE(lean.weight_bytes(), fraction * fp32_bytes) << precision_name(p);
    EXPECT_LE(lean.weight_bytes(), fraction * fp32_bytes + 5 * N * 4) << precision_name(p);
    test::expect_error([&] { (void)lean.weight(); }, "Linear::weight: the float32 weights (512, 512) were dropped once packed");
    const Linear kept(W, b, onednn(p), KeepWeights::kAlsoFloat32);
    EXPECT_EQ(kept.weight_bytes(), lean.weight_bytes() + fp32_bytes) << precision_name(p);
    EXPECT_EQ(kept.weight().data(), W.data());
    const Tensor x = test::random_tensor(Shape{3, K}, 13);
    EXPECT_EQ(max_abs_diff(lean(x, "test"), kept(x, "test")), 0.0) << precision_name(p);
  }
}

TEST(LinearBackend, OptionsAreChecked) {
  test::expect_error([] { Linear(Tensor(Shape{2, 2}), {}, {Precision::kBf16, GemmBackend::kReference}); },
                     "Linear: precision bf16 needs the oneDNN GEMM backend");
  test::expect_error([] { parse_precision("fp16", "tokenmix run"); },
                     "tokenmix run: precision: expected fp32, bf16, int8 or auto, got 'fp16'");
  EXPECT_EQ(parse_precision("auto"), Precision::kAuto);
  const Linear a(Tensor(Shape{2, 2}), {}, {Precision::kAuto, GemmBackend::kOnednn});
  EXPECT_NE(a.precision(), Precision::kAuto);
  EXPECT_EQ(a.precision(), resolve_precision(Precision::kAuto));
  EXPECT_NE(a.impl().find("onednn "), std::string::npos) << a.impl();
  const Linear r(Tensor(Shape{2, 2}), {}, kReference);
  EXPECT_EQ(r.impl(), "openblas sgemm (reference)");
  EXPECT_EQ(r.precision(), Precision::kFp32);
}

TEST(LinearBackend, Bf16RoundingIsNearestEven) {
  EXPECT_EQ(to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(to_bf16(from_bf16(0x3f80) + 0x1p-8f), 0x3f80);   // tie -> even (down)
  EXPECT_EQ(to_bf16(from_bf16(0x3f81) + 0x1p-8f), 0x3f82);   // tie -> even (up)
  EXPECT_EQ(to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);     // above the tie
  EXPECT_EQ(to_bf16(-2.5f), 0xc020);
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::numeric_limits<float>::signaling_NaN()))));
  EXPECT_TRUE(std::isinf(from_bf16(to_bf16(std::numeric_limits<float>::infinity()))));
  EXPECT_TRUE(std::isinf(from_bf16(to_bf16(3.4e38f))));  // rounds past the largest bf16
}

}  // namespace
}  // namespace tokenmix
