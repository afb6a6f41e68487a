// ESPnet multi-head attention: properties beyond the reference cases (random shapes against a plain
// reference, masks, the KV cache and cached cross-attention memory, error paths).
#include <gtest/gtest.h>

#include <cmath>

#include "stream_checks.h"
#include "test_util.h"
#include "tokenmix/layers/espnet_mha.h"
#include "tokenmix/layers/masks.h"

namespace tokenmix {
namespace {

using test::random_mask;

StateDict random_weights(int64_t E, uint32_t seed) {
  StateDict sd;
  for (const char* p : {"linear_q", "linear_k", "linear_v", "linear_out"}) {
    test::add_random(sd, std::string(p) + ".weight", Shape{E, E}, seed++);
    test::add_random(sd, std::string(p) + ".bias", Shape{E}, seed++);
  }
  return sd;
}

// Plain per-element implementation of SPEC section 4 (double accumulation, fmin fill then zero).
Tensor naive_forward(const StateDict& w, int64_t H, const Tensor& query, const Tensor& memory, const Mask& mask) {
  const int64_t B = query.dim(0), T1 = query.dim(1), T2 = memory.dim(1), E = query.dim(2), D = E / H;
  auto proj = [&](const Tensor& x, const std::string& name) {
    const Tensor& W = w.get(name + ".weight");
    const Tensor& b = w.get(name + ".bias");
    Tensor y{Shape{x.dim(0), x.dim(1), E}};
    for (int64_t i = 0; i < x.dim(0) * x.dim(1); ++i)
      for (int64_t o = 0; o < E; ++o) {
        double acc = b.at(o);
        for (int64_t k = 0; k < E; ++k) acc += static_cast<double>(x.data()[i * E + k]) * W.at(o, k);
        y.data()[i * E + o] = static_cast<float>(acc);
      }
    return y;
  };
  const Tensor q = proj(query, "linear_q"), k = proj(memory, "linear_k"), v = proj(memory, "linear_v");
  Tensor ctx{Shape{B, T1, E}};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T1; ++i) {
        std::vector<double> s(T2);
        double mx = -INFINITY;
        for (int64_t j = 0; j < T2; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q.at(b, i, h * D + d)) * k.at(b, j, h * D + d);
          const bool keep = mask.empty() || mask.at(mask.dim(0) == 1 ? 0 : b, mask.dim(1) == 1 ? 0 : i, j);
          s[j] = keep ? dot / std::sqrt(static_cast<double>(D)) : -3.4028234663852886e38;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& x : s) sum += x = std::exp(x - mx);
        for (int64_t j = 0; j < T2; ++j) {
          const bool keep = mask.empty() || mask.at(mask.dim(0) == 1 ? 0 : b, mask.dim(1) == 1 ? 0 : i, j);
          s[j] = keep ? s[j] / sum : 0.0;
        }
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < T2; ++j) acc += s[j] * v.at(b, j, h * D + d);
          ctx.at(b, i, h * D + d) = static_cast<float>(acc);
        }
      }
  return proj(ctx, "linear_out");
}

TEST(EspnetMha, RandomShapesMatchNaiveReference) {
  struct Cfg { int64_t B, T1, T2, E, H; };
  uint32_t seed = 1;
  for (const Cfg c : {Cfg{1, 1, 1, 4, 1}, Cfg{2, 7, 7, 12, 3}, Cfg{3, 5, 11, 20, 5}, Cfg{2, 70, 33, 16, 2},
                      Cfg{1, 130, 130, 8, 8}}) {
    const StateDict w = random_weights(c.E, seed);
    EspnetMultiHeadedAttention mha(c.E, c.H, w);
    const Tensor q = test::random_tensor(Shape{c.B, c.T1, c.E}, seed + 100);
    const Tensor m = test::random_tensor(Shape{c.B, c.T2, c.E}, seed + 200);
    for (const Mask& mask : {Mask{}, random_mask(Shape{c.B, 1, c.T2}, seed + 300),
                             random_mask(Shape{c.B, c.T1, c.T2}, seed + 400, 0.5f)}) {
      const Tensor got = mha.forward(q, m, mask, nullptr);
      EXPECT_LE(max_abs_diff(got, naive_forward(w, c.H, q, m, mask)), 2e-5f)
          << "B=" << c.B << " T1=" << c.T1 << " T2=" << c.T2 << " E=" << c.E << " H=" << c.H;
    }
    ++seed;
  }
}

TEST(EspnetMha, FullyMaskedRowIsOutputBiasAndZeroAttention) {
  const StateDict w = random_weights(8, 7);
  EspnetMultiHeadedAttention mha(8, 2, w);
  const Tensor x = test::random_tensor(Shape{2, 4, 8}, 3);
  Mask mask{Shape{2, 1, 4}};
  for (int64_t j = 0; j < 4; ++j) mask.at(0, 0, j) = 1;  // row 1 fully masked
  Tensor attn;
  const Tensor y = mha.forward(x, Tensor{}, mask, &attn);
  for (int64_t t = 0; t < 4; ++t)
    for (int64_t e = 0; e < 8; ++e) EXPECT_EQ(y.at(1, t, e), w.get("linear_out.bias").at(e));
  for (int64_t i = 0; i < 2 * 4 * 4; ++i) EXPECT_EQ(attn[1].data()[i], 0.f);
}

TEST(EspnetMha, UnifiedKeyPaddingMaskIsTrueForPadded) {
  const StateDict w = random_weights(8, 9);
  EspnetMultiHeadedAttention mha(8, 2, w);
  const Tensor x = test::random_tensor(Shape{2, 5, 8}, 4);
  Mask kpm{Shape{2, 5}}, keep{Shape{2, 1, 5}};
  for (int64_t t = 0; t < 5; ++t) {
    kpm.at(1, t) = t >= 3;
    keep.at(0, 0, t) = 1;
    keep.at(1, 0, t) = t < 3;
  }
  EXPECT_EQ(max_abs_diff(mha.forward(x, kpm), mha.forward(x, Tensor{}, keep, nullptr)), 0.f);
}

class EspnetStream : public ::testing::TestWithParam<int64_t> {};  // left_context

TEST_P(EspnetStream, StreamEqualsCausalForward) {
  const StateDict w = random_weights(24, 11);
  EspnetMultiHeadedAttention mha(24, 3, w);
  const Tensor x = test::random_tensor(Shape{2, 23, 24}, 5);
  StreamOptions opts;
  opts.left_context = GetParam();
  test::expect_stream_matches_reference(mha, x, opts);
  if (opts.left_context == 0) {  // the reference itself is the masked upstream forward
    const Tensor causal = mha.forward(x, Tensor{}, causal_keep_mask(23, 0, "test"), nullptr);
    EXPECT_LE(max_abs_diff(mha.stream_reference(x, opts), causal), 1e-6f);
  }
}

TEST_P(EspnetStream, SaveRestoreAndResetRow) {
  const StateDict w = random_weights(16, 12);
  EspnetMultiHeadedAttention mha(16, 4, w);
  const Tensor x = test::random_tensor(Shape{3, 17, 16}, 6);
  StreamOptions opts;
  opts.left_context = GetParam();
  test::expect_restore_continues_identically(mha, x, opts, test::temp_path("espnet_stream.safetensors"));
  test::expect_reset_row_isolated(mha, x, opts);
}

INSTANTIATE_TEST_SUITE_P(LeftContext, EspnetStream, ::testing::Values(0, 1, 4));

TEST(EspnetMha, StreamAllocatesNothingPerPush) {
  const StateDict w = random_weights(32, 13);
  EspnetMultiHeadedAttention mha(32, 4, w);
  const Tensor x = test::random_tensor(Shape{2, 40, 32}, 7);
  StreamOptions opts;
  opts.left_context = 8;
  test::expect_no_allocations_per_push(mha, x, opts, 1);
  test::expect_no_allocations_per_push(mha, x, opts, 3);
}

TEST(EspnetMha, ProjectedMemoryStepEqualsForward) {
  const StateDict w = random_weights(16, 14);
  EspnetMultiHeadedAttention mha(16, 2, w);
  const Tensor q = test::random_tensor(Shape{3, 6, 16}, 8), m = test::random_tensor(Shape{3, 9, 16}, 9);
  const Mask mask = random_mask(Shape{3, 1, 9}, 10);
  const Tensor full = mha.forward(q, m, mask, nullptr);
  const auto mem = mha.project_memory(m, mask);
  for (int64_t t = 0; t < 6; ++t) {
    Tensor token{Shape{3, 16}};
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t e = 0; e < 16; ++e) token.at(b, e) = q.at(b, t, e);
    const Tensor y = mha.step(token, mem);
    ASSERT_EQ(y.shape(), (Shape{3, 16}));
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t e = 0; e < 16; ++e) EXPECT_NEAR(y.at(b, e), full.at(b, t, e), 1e-5f);
  }
  EXPECT_LE(max_abs_diff(mha.step(q, mem), full), 1e-5f);  // a chunk of queries at once
}

TEST(EspnetMha, ErrorsNameFunctionArgumentAndShapes) {
  const StateDict w = random_weights(8, 15);
  auto expect_error = [](auto&& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { EspnetMultiHeadedAttention(8, 3, w); }, "n_feat (8) must be divisible by n_head (3)");
  expect_error([&] { EspnetMultiHeadedAttention(8, 0, w); }, "n_head: expected >= 1");
  expect_error([&] { EspnetMultiHeadedAttention(16, 2, w); }, "shape mismatches");
  StateDict missing = w;
  StateDict partial;
  for (const auto& k : w.keys())
    if (k != "linear_v.bias") partial.set(k, w.get(k));
  partial.set("extra.weight", Tensor{Shape{1}});
  expect_error([&] { EspnetMultiHeadedAttention(8, 2, partial); }, "missing keys [linear_v.bias]");
  expect_error([&] { EspnetMultiHeadedAttention(8, 2, partial); }, "unexpected keys [extra.weight]");
  EspnetMultiHeadedAttention mha(8, 2, w);
  const Tensor x = test::random_tensor(Shape{2, 5, 8}, 1);
  expect_error([&] { mha.forward(test::random_tensor(Shape{2, 5, 6}, 1), Tensor{}, Mask{}, nullptr); },
               "EspnetMultiHeadedAttention::forward: query: expected shape (B, T1, 8) or (B, 8), got (2, 5, 6)");
  expect_error([&] { mha.forward(x, test::random_tensor(Shape{3, 5, 8}, 1), Mask{}, nullptr); }, "memory");
  expect_error([&] { mha.forward(x, Tensor{}, Mask{Shape{2, 5}}, nullptr); }, "2-D masks are rejected");
  expect_error([&] { mha.forward(x, Tensor{}, Mask{Shape{2, 1, 4}}, nullptr); }, "mask: expected shape");
  expect_error([&] { mha.forward(x, Mask{Shape{2, 4}}); }, "key_padding_mask: expected shape (2, 5)");
  auto s = mha.open_stream(2);
  expect_error([&] { s->push(test::random_tensor(Shape{1, 1, 8}, 1)); }, "chunk: expected shape (2, C, 8)");
  expect_error([&] { s->push(Tensor{Shape{2, 0, 8}}); }, "at least 1 token");
  StreamOptions bad;
  bad.left_context = -1;
  expect_error([&] { mha.open_stream(2, bad); }, "left_context");
  expect_error([&] { mha.open_stream(0); }, "batch");
}

// Upstream reads a 2-D (B, E) query (and memory) as one token and returns (B, 1, E) (SPEC section 4,
// "Shape leniency"; found by the differential run, shared/differential).
TEST(EspnetMha, TwoDimensionalQueryIsOneToken) {
  const StateDict w = random_weights(8, 11);
  const EspnetMultiHeadedAttention mha(8, 2, w);
  const Tensor q = test::random_tensor(Shape{3, 8}, 2), mem = test::random_tensor(Shape{3, 4, 8}, 3);
  const Tensor q3 = q.reshape(Shape{3, 1, 8});
  for (const Tensor& m : {Tensor{}, mem, test::random_tensor(Shape{3, 1, 8}, 6)}) {
    const Tensor y = mha.forward(q, m, Mask{}, nullptr);
    ASSERT_EQ(y.shape(), (Shape{3, 1, 8}));
    EXPECT_TRUE(test::bit_equal(y, mha.forward(q3, m, Mask{}, nullptr)));
  }
  const Tensor m2 = test::random_tensor(Shape{3, 8}, 4);
  EXPECT_TRUE(test::bit_equal(mha.forward(q, m2, Mask{}, nullptr),
                              mha.forward(q3, m2.reshape(Shape{3, 1, 8}), Mask{}, nullptr)));
  test::expect_error([&] { mha.forward(q, test::random_tensor(Shape{2, 8}, 5), Mask{}, nullptr); },
               "memory: expected shape (3, T2, 8) or (3, 8), got (2, 8)");
}

}  // namespace
}  // namespace tokenmix
