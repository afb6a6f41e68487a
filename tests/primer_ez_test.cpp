// Tests for the labml MultiHeadAttention / Primer-EZ family (tokenmix/layers/primer_ez.h): property
// tests against a plain-loop reference kept here (written from SPEC.md, on upstream's own parameter
// layouts), the unified Layer API, streaming == causal offline for several chunkings, save/restore,
// reset_row and error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>

#include "cases/case.h"
#include "test_util.h"
#include "tokenmix/layers/primer_ez.h"

namespace tokenmix {
namespace {

using test::all_close;
using test::bit_equal;
using test::expect_error;
using test::random_tensor;
using test::run_stream;

const QkvConv kAllConvs[] = {QkvConv::kNone, QkvConv::kPerChannel, QkvConv::kShared, QkvConv::kPerHead,
                             QkvConv::kEfficient};

// ------------------------------------------------------------------------------------------------
// Upstream-layout state_dicts and the plain reference.

void add_conv_params(StateDict& sd, const std::string& prefix, QkvConv conv, int64_t H, int64_t dk, int64_t K,
                     uint32_t seed) {
  const int64_t P = conv == QkvConv::kShared ? 1 : conv == QkvConv::kPerHead ? H * dk : dk;
  if (conv == QkvConv::kEfficient) {
    sd.set(prefix + "kernels", random_tensor(Shape{K, P}, seed, 0.5f));
  } else {
    sd.set(prefix + "conv.weight", random_tensor(Shape{P, 1, K}, seed, 0.5f));
    sd.set(prefix + "conv.bias", random_tensor(Shape{P}, seed + 1, 0.3f));
  }
}

StateDict make_attention_sd(QkvConv conv, int64_t H, int64_t D, bool bias, uint32_t seed) {
  StateDict sd;
  const char* names[3] = {"query", "key", "value"};
  for (int i = 0; i < 3; ++i) {
    const std::string X = names[i];
    const std::string lin = conv == QkvConv::kNone ? X + ".linear." : X + ".0.linear.";
    test::add_random(sd, lin + "weight", Shape{D, D}, seed + 10 * i);
    if (bias || i == 2) test::add_random(sd, lin + "bias", Shape{D}, seed + 10 * i + 1);
    if (conv != QkvConv::kNone) add_conv_params(sd, X + ".1.", conv, H, D / H, 3, seed + 10 * i + 2);
  }
  test::add_random(sd, "output.weight", Shape{D, D}, seed + 40);
  test::add_random(sd, "output.bias", Shape{D}, seed + 41);
  return sd;
}

// Upstream convolution of p [S, B, H*dk] (double) along time, from upstream's parameter layout.
std::vector<double> ref_conv(const StateDict& sd, const std::string& prefix, QkvConv conv, const std::vector<double>& p,
                             int64_t S, int64_t B, int64_t H, int64_t dk) {
  const int64_t W = H * dk;
  std::vector<double> y(p.size(), 0.0);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t f = 0; f < W; ++f) {
        const int64_t c = f % dk;
        double acc = 0;
        if (conv == QkvConv::kEfficient) {
          const Tensor& k = sd.get(prefix + "kernels");
          for (int64_t i = 0; i < k.dim(0); ++i)
            if (s - i >= 0) acc += k.at(i, c) * p[((s - i) * B + b) * W + f];
        } else {
          const Tensor& w = sd.get(prefix + "conv.weight");
          const Tensor& bias = sd.get(prefix + "conv.bias");
          const int64_t idx = conv == QkvConv::kShared ? 0 : conv == QkvConv::kPerHead ? f : c;
          const int64_t K = w.dim(2);
          acc = bias.at(idx);
          for (int64_t j = 0; j < K; ++j) {  // cross-correlation over the left-padded window
            const int64_t t = s - (K - 1) + j;
            if (t >= 0) acc += w.at(idx, 0, j) * p[(t * B + b) * W + f];
          }
        }
        y[(s * B + b) * W + f] = acc;
      }
  return y;
}

// Sub-module X of upstream's attention on x [S, B, D]: projection then conv. Returns [S, B, D] doubles.
std::vector<double> ref_project(const StateDict& sd, QkvConv conv, const std::string& X, const Tensor& x, int64_t H) {
  const int64_t S = x.dim(0), B = x.dim(1), D = x.dim(2);
  const std::string lin = conv == QkvConv::kNone ? X + ".linear." : X + ".0.linear.";
  const Tensor& W = sd.get(lin + "weight");
  const bool has_b = sd.contains(lin + "bias");
  std::vector<double> p(S * B * D);
  for (int64_t r = 0; r < S * B; ++r)
    for (int64_t o = 0; o < D; ++o) {
      double acc = has_b ? sd.get(lin + "bias").at(o) : 0.0;
      for (int64_t i = 0; i < D; ++i) acc += static_cast<double>(x.data()[r * D + i]) * W.at(o, i);
      p[r * D + o] = acc;
    }
  if (conv == QkvConv::kNone) return p;
  return ref_conv(sd, X + ".1.", conv, p, S, B, H, D / H);
}

// Upstream forward with tokenmix's guard (fully masked row: probability 0, context 0).
// mask: [S|1, Sk, B|1], non-zero = may attend, or empty. Returns y [S, B, D]; attn [S, Sk, B, H].
Tensor ref_forward(const StateDict& sd, QkvConv conv, int64_t H, const Tensor& query, const Tensor& key,
                   const Tensor& value, const Mask& mask, Tensor* attn) {
  const int64_t S = query.dim(0), B = query.dim(1), D = query.dim(2), Sk = key.dim(0), dk = D / H;
  const auto q = ref_project(sd, conv, "query", query, H), k = ref_project(sd, conv, "key", key, H),
             v = ref_project(sd, conv, "value", value, H);
  std::vector<double> ctx(S * B * D, 0.0), sc(Sk);
  *attn = Tensor{Shape{S, Sk, B, H}};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < S; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < Sk; ++j) {
          const bool keep = mask.empty() || mask.at(mask.dim(0) == 1 ? 0 : i, j, mask.dim(2) == 1 ? 0 : b) != 0;
          double dot = 0;
          for (int64_t c = 0; c < dk; ++c) dot += q[(i * B + b) * D + h * dk + c] * k[(j * B + b) * D + h * dk + c];
          sc[j] = keep ? dot / std::sqrt(static_cast<double>(dk)) : -INFINITY;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < Sk; ++j) sum += sc[j] = mx == -INFINITY ? 0.0 : std::exp(sc[j] - mx);
        for (int64_t j = 0; j < Sk; ++j) {
          const double pj = sum > 0 ? sc[j] / sum : 0.0;
          attn->at(i, j, b, h) = static_cast<float>(pj);
          for (int64_t c = 0; c < dk; ++c) ctx[(i * B + b) * D + h * dk + c] += pj * v[(j * B + b) * D + h * dk + c];
        }
      }
  Tensor y{Shape{S, B, D}};
  const Tensor& Wo = sd.get("output.weight");
  const Tensor& bo = sd.get("output.bias");
  for (int64_t r = 0; r < S * B; ++r)
    for (int64_t o = 0; o < D; ++o) {
      double acc = bo.at(o);
      for (int64_t i = 0; i < D; ++i) acc += ctx[r * D + i] * Wo.at(o, i);
      y.data()[r * D + o] = static_cast<float>(acc);
    }
  return y;
}

// (A, B, E) -> (B, A, E).
Tensor swap01(const Tensor& x) {
  Tensor y{Shape{x.dim(1), x.dim(0), x.dim(2)}};
  for (int64_t a = 0; a < x.dim(0); ++a)
    for (int64_t b = 0; b < x.dim(1); ++b)
      for (int64_t e = 0; e < x.dim(2); ++e) y.at(b, a, e) = x.at(a, b, e);
  return y;
}

// test::random_mask, optionally with query 0 of batch 0 seeing nothing.
Mask random_mask(const Shape& shape, std::mt19937& gen, bool with_empty_row) {
  Mask m = test::random_mask(shape, gen);
  if (with_empty_row)
    for (int64_t j = 0; j < shape[1]; ++j) m.at(0, j, 0) = 0;  // query 0 of batch 0 sees nothing
  return m;
}

// Time-major (T, T, 1) causal band mask.
Mask band_mask(int64_t T, int64_t left_context) {
  Mask m{Shape{T, T, 1}};
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j <= i; ++j) m.at(i, j, 0) = left_context == 0 || i - j < left_context;
  return m;
}

// ------------------------------------------------------------------------------------------------
// Offline properties

TEST(PrimerEz, RandomShapesMatchReference) {
  std::mt19937 gen(1234);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  int trial = 0;
  for (QkvConv conv : kAllConvs)
    for (int rep = 0; rep < 6; ++rep, ++trial) {
      const int64_t H = std::vector<int64_t>{1, 3, 5, 2, 7, 1}[rep], dk = pick(1, 5), D = H * dk;
      const bool bias = conv != QkvConv::kNone || rep % 2 == 0;
      const int64_t S = pick(1, 10), Sk = rep % 3 == 0 ? S : pick(1, 10), B = pick(1, 3);
      const StateDict sd = make_attention_sd(conv, H, D, bias, 100 + trial);
      const LabmlMultiHeadAttention layer(conv, H, D, sd, bias);
      const Tensor q = random_tensor(Shape{S, B, D}, 1 + trial), k = random_tensor(Shape{Sk, B, D}, 2 + trial),
                   v = random_tensor(Shape{Sk, B, D}, 3 + trial);
      std::vector<Mask> masks = {Mask{}, random_mask(Shape{S, Sk, B}, gen, true),
                                 random_mask(Shape{1, Sk, B}, gen, false), random_mask(Shape{S, Sk, 1}, gen, false)};
      if (S == Sk) masks.push_back(band_mask(S, 0));
      for (size_t mi = 0; mi < masks.size(); ++mi) {
        const std::string what = std::string(qkv_conv_name(conv)) + " H=" + std::to_string(H) +
                                 " dk=" + std::to_string(dk) + " S=" + std::to_string(S) + " Sk=" + std::to_string(Sk) +
                                 " B=" + std::to_string(B) + " mask#" + std::to_string(mi);
        Tensor attn, attn_ref;
        const Tensor y = layer.forward(q, k, v, masks[mi], &attn);
        const Tensor y_ref = ref_forward(sd, conv, H, q, k, v, masks[mi], &attn_ref);
        EXPECT_TRUE(all_close(y, y_ref, 1e-4f)) << what + " y";
        EXPECT_TRUE(all_close(attn, attn_ref, 1e-5f)) << what + " attn";
        for (float p : attn) ASSERT_FALSE(std::isnan(p)) << what;
      }
      // Sub-module outputs.
      using P = LabmlMultiHeadAttention::Projection;
      const auto kr = ref_project(sd, conv, "key", k, H);
      const Tensor kp = layer.project(P::kKey, k);
      ASSERT_EQ(kp.shape(), (Shape{Sk, B, H, dk}));
      for (int64_t i = 0; i < kp.numel(); ++i) ASSERT_NEAR(kp.data()[i], kr[i], 1e-4);
    }
}

TEST(PrimerEz, FullyMaskedRowGivesZeroProbsAndOutputBias) {
  const int64_t H = 2, D = 8, S = 3, B = 2;
  const StateDict sd = make_attention_sd(QkvConv::kPerChannel, H, D, true, 7);
  const LabmlMultiHeadAttention layer(QkvConv::kPerChannel, H, D, sd);
  Mask m{Shape{S, S, B}};
  for (auto& x : m) x = 1;
  for (int64_t j = 0; j < S; ++j) m.at(1, j, 1) = 0;
  Tensor attn;
  const Tensor x = random_tensor(Shape{S, B, D}, 8);
  const Tensor y = layer.forward(x, x, x, m, &attn);
  for (int64_t j = 0; j < S; ++j)
    for (int64_t h = 0; h < H; ++h) EXPECT_EQ(attn.at(1, j, 1, h), 0.f);
  for (int64_t o = 0; o < D; ++o) EXPECT_FLOAT_EQ(y.at(1, 1, o), sd.get("output.bias").at(o));
}

TEST(PrimerEz, UnifiedApiMatchesSequenceFirstForward) {
  std::mt19937 gen(5);
  for (QkvConv conv : kAllConvs) {
    const int64_t H = 3, D = 12, B = 3, T = 7;
    const StateDict sd = make_attention_sd(conv, H, D, true, 21);
    const LabmlMultiHeadAttention layer(conv, H, D, sd);
    const Tensor x = random_tensor(Shape{B, T, D}, 22);
    Mask kpm{Shape{B, T}};
    std::bernoulli_distribution pad(0.3);
    for (auto& v : kpm) v = pad(gen);
    kpm.at(0, 0) = 0;
    Mask keep{Shape{1, T, B}};  // labml mask [1, S_k, B], True = may attend
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) keep.at(0, t, b) = !kpm.at(b, t);
    const Tensor xt = swap01(x);
    EXPECT_TRUE(all_close(layer.forward(x, kpm), swap01(layer.forward(xt, xt, xt, keep)), 1e-5f))
        << qkv_conv_name(conv);
    EXPECT_TRUE(all_close(layer.forward(x), swap01(layer.forward(xt, xt, xt, Mask{})), 1e-5f)) << qkv_conv_name(conv);
    // stream_reference = causal (banded) forward.
    for (int64_t lc : {0, 1, 3}) {
      Tensor attn_ref;
      const Tensor want = swap01(ref_forward(sd, conv, H, xt, xt, xt, band_mask(T, lc), &attn_ref));
      EXPECT_TRUE(all_close(layer.stream_reference(x, StreamOptions{lc}), want, 1e-4f))
          << std::string(qkv_conv_name(conv)) + " lc=" + std::to_string(lc);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Stand-alone convolutions and SquaredReLU

TEST(PrimerEz, StandaloneConvolutionsMatchReference) {
  std::mt19937 gen(9);
  int trial = 0;
  for (QkvConv conv : {QkvConv::kPerChannel, QkvConv::kShared, QkvConv::kPerHead, QkvConv::kEfficient})
    for (int64_t K : {2, 3, 4})
      for (int rep = 0; rep < 2; ++rep, ++trial) {
        const int64_t H = 1 + gen() % 4, dk = 1 + gen() % 5, S = 1 + gen() % 8, B = 1 + gen() % 3;
        StateDict sd, full;
        add_conv_params(sd, "", conv, H, dk, K, 300 + trial);
        for (const auto& key : sd.keys()) full.set("c." + key, sd.get(key));
        const SpatialDepthWiseConvolution m(conv, H, dk, K, sd);
        const Tensor x = random_tensor(Shape{S, B, H, dk}, 400 + trial);
        const Tensor y = m.forward(x);
        const auto want = ref_conv(full, "c.", conv, std::vector<double>(x.begin(), x.end()), S, B, H, dk);
        ASSERT_EQ(y.shape(), x.shape());
        for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y.data()[i], want[i], 1e-5) << trial;
      }
}

TEST(PrimerEz, EfficientConvIsReversedPerChannelConvWithoutBias) {
  const int64_t dk = 4, K = 3;
  StateDict eff, dw;
  const Tensor w = random_tensor(Shape{dk, 1, K}, 31, 0.5f);
  Tensor kernels{Shape{K, dk}};
  for (int64_t i = 0; i < K; ++i)
    for (int64_t c = 0; c < dk; ++c) kernels.at(i, c) = w.at(c, 0, K - 1 - i);
  eff.set("kernels", kernels);
  dw.set("conv.weight", w);
  dw.set("conv.bias", Tensor{Shape{dk}});
  const Tensor x = random_tensor(Shape{6, 2, 3, dk}, 32);
  EXPECT_TRUE(bit_equal(SpatialDepthWiseConvolution(QkvConv::kEfficient, 0, dk, K, eff).forward(x),
                        SpatialDepthWiseConvolution(QkvConv::kPerChannel, 0, dk, K, dw).forward(x)));
}

TEST(PrimerEz, SquaredRelu) {
  const Tensor x{Shape{5}, {-2.f, -0.f, 0.5f, 3.f, -1e-3f}};
  const Tensor y = squared_relu(x);
  const std::vector<float> want{0.f, 0.f, 0.25f, 9.f, 0.f};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(y.data()[i], want[i]);
}

// ------------------------------------------------------------------------------------------------
// Streaming

TEST(PrimerEz, StreamEqualsCausalOffline) {
  for (QkvConv conv : kAllConvs)
    for (int64_t lc : {0, 4}) {
      const int64_t H = 3, D = 9, B = 2, T = 11;
      const StateDict sd = make_attention_sd(conv, H, D, conv != QkvConv::kNone ? true : false, 50);
      const LabmlMultiHeadAttention layer(conv, H, D, sd, conv != QkvConv::kNone);
      const Tensor x = random_tensor(Shape{B, T, D}, 51);
      const StreamOptions opt{lc};
      const Tensor want = layer.stream_reference(x, opt);
      for (const auto& chunks : std::vector<std::vector<int64_t>>{{1}, {3}, {T}, {2, 1, 4, 1, 3}}) {
        auto s = layer.open_stream(B, opt);
        EXPECT_TRUE(all_close(run_stream(*s, x, chunks), want, 1e-5f))
            << std::string(qkv_conv_name(conv)) + " lc=" + std::to_string(lc) + " chunk=" + std::to_string(chunks[0]);
      }
    }
}

TEST(PrimerEz, SaveRestoreContinuesBitForBit) {
  for (QkvConv conv : kAllConvs) {
    const int64_t H = 2, D = 8, B = 2, T = 9;
    const LabmlMultiHeadAttention layer(conv, H, D, make_attention_sd(conv, H, D, true, 60));
    const Tensor x = random_tensor(Shape{B, T, D}, 61);
    const StreamOptions opt{5};
    auto a = layer.open_stream(B, opt);
    a->push(cases::slice(x, 1, 0, 4));
    const std::string path = test::temp_path("primer_ez_" + std::string(qkv_conv_name(conv)) + ".safetensors");
    a->save(path);
    auto b = layer.open_stream(B, opt);
    b->push(cases::slice(x, 1, 0, 2));  // junk state, overwritten by restore
    b->restore(path);
    for (auto [t0, t1] : std::vector<std::pair<int64_t, int64_t>>{{4, 5}, {5, 8}, {8, 9}}) {
      const Tensor ya = a->push(cases::slice(x, 1, t0, t1)).clone();
      const Tensor yb = b->push(cases::slice(x, 1, t0, t1)).clone();
      EXPECT_TRUE(bit_equal(ya, yb)) << qkv_conv_name(conv) << " at " << t0;
    }
    std::filesystem::remove(path);
  }
}

TEST(PrimerEz, RestoreRejectsOtherVariant) {
  const auto path = test::temp_path("primer_ez_variant.safetensors");
  const LabmlMultiHeadAttention mdha(QkvConv::kPerChannel, 2, 8, make_attention_sd(QkvConv::kPerChannel, 2, 8, true, 1));
  const LabmlMultiHeadAttention mha(QkvConv::kNone, 2, 8, make_attention_sd(QkvConv::kNone, 2, 8, true, 1));
  auto s = mdha.open_stream(1);
  s->push(random_tensor(Shape{1, 2, 8}, 2));
  s->save(path);
  auto t = mha.open_stream(1);
  try {
    t->restore(path);
    ADD_FAILURE() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qkv_conv"), std::string::npos) << e.what();
  }
  auto u = mdha.open_stream(2);
  EXPECT_THROW(u->restore(path), Error);
  std::filesystem::remove(path);
}

TEST(PrimerEz, ResetRowIsolatesRows) {
  for (QkvConv conv : {QkvConv::kNone, QkvConv::kPerHead, QkvConv::kEfficient}) {
    const int64_t H = 2, D = 6, B = 3, T = 8, half = 5;
    const LabmlMultiHeadAttention layer(conv, H, D, make_attention_sd(conv, H, D, true, 70));
    const Tensor x = random_tensor(Shape{B, T, D}, 71);
    auto full = layer.open_stream(B);
    full->push(cases::slice(x, 1, 0, half));
    const Tensor y_full = full->push(cases::slice(x, 1, half, T)).clone();
    auto s = layer.open_stream(B);
    s->push(cases::slice(x, 1, 0, half));
    s->reset_row(1);
    const Tensor y = s->push(cases::slice(x, 1, half, T)).clone();
    for (int64_t b : {0, 2})
      for (int64_t t = 0; t < T - half; ++t)
        for (int64_t e = 0; e < D; ++e) ASSERT_EQ(y.at(b, t, e), y_full.at(b, t, e)) << qkv_conv_name(conv);
    // Row 1 restarted: equals the causal forward of its second half alone.
    const Tensor tail = cases::slice(cases::slice(x, 0, 1, 2), 1, half, T);
    const Tensor want = layer.stream_reference(tail, {});
    for (int64_t t = 0; t < T - half; ++t)
      for (int64_t e = 0; e < D; ++e) ASSERT_NEAR(y.at(1, t, e), want.at(0, t, e), 1e-5) << qkv_conv_name(conv);
  }
}

// ------------------------------------------------------------------------------------------------
// Errors

TEST(PrimerEz, ErrorPaths) {
  const StateDict sd = make_attention_sd(QkvConv::kPerChannel, 2, 8, true, 80);
  expect_error([&] { (void)LabmlMultiHeadAttention(QkvConv::kPerChannel, 3, 8, sd); }, "divisible by heads");
  expect_error([&] { (void)LabmlMultiHeadAttention(QkvConv::kPerChannel, 0, 8, sd); }, "heads: expected >= 1");
  expect_error([&] { (void)LabmlMultiHeadAttention(QkvConv::kPerChannel, 2, 8, sd, false); }, "bias: expected true");
  expect_error([&] { (void)LabmlMultiHeadAttention(QkvConv::kShared, 2, 8, sd); }, "shape mismatches");
  expect_error([&] { (void)LabmlMultiHeadAttention(QkvConv::kNone, 2, 8, sd); }, "missing keys");
  const StateDict nb = make_attention_sd(QkvConv::kNone, 2, 8, true, 81);
  expect_error([&] { (void)LabmlMultiHeadAttention(QkvConv::kNone, 2, 8, nb, false); }, "unexpected keys");

  const LabmlMultiHeadAttention layer(QkvConv::kPerChannel, 2, 8, sd);
  const Tensor x = random_tensor(Shape{4, 2, 8}, 82);
  expect_error([&] { layer.forward(random_tensor(Shape{4, 2, 6}, 1), x, x, Mask{}); },
               "LabmlMultiHeadAttention::forward: query: expected shape (S, B, 8), got (4, 2, 6)");
  expect_error([&] { layer.forward(x, random_tensor(Shape{4, 3, 8}, 1), x, Mask{}); }, "key: expected shape");
  expect_error([&] { layer.forward(x, x, random_tensor(Shape{3, 2, 8}, 1), Mask{}); }, "value: expected shape");
  expect_error([&] { layer.forward(x, x, x, Mask{Shape{4, 4}}); }, "mask: expected shape (4 or 1, 4, 2 or 1)");
  expect_error([&] { layer.forward(x, x, x, Mask{Shape{2, 4, 2}}); }, "mask: expected shape");
  expect_error([&] { layer.forward(x, x, x, Mask{Shape{4, 4, 3}}); }, "mask: expected shape");
  expect_error([&] { layer.forward(x, Mask{Shape{2, 3}}); }, "key_padding_mask: expected shape");
  expect_error([&] { layer.project(LabmlMultiHeadAttention::Projection::kQuery, Tensor{Shape{4, 8}}); }, "x: expected");
  expect_error([&] { layer.stream_reference(x, StreamOptions{-1}); }, "left_context: expected >= 0");
  expect_error([&] { layer.open_stream(0); }, "batch: expected 1 <= batch <= 1048576, got 0");
  expect_error([&] { layer.open_stream(1, StreamOptions{-2}); }, "left_context");
  auto s = layer.open_stream(2);
  expect_error([&] { s->push(random_tensor(Shape{3, 1, 8}, 1)); }, "chunk: expected shape");
  expect_error([&] { s->reset_row(2); }, "reset_row: b: expected 0 <= b < 2");

  StateDict c;
  add_conv_params(c, "", QkvConv::kPerChannel, 1, 4, 3, 90);
  const SpatialDepthWiseConvolution conv(QkvConv::kPerChannel, 0, 4, 3, c);
  expect_error([&] { conv.forward(Tensor{Shape{3, 1, 2, 5}}); },
               "SpatialDepthWiseConvolution::forward: x: expected shape (S, B, H, 4), got (3, 1, 2, 5)");
  expect_error([&] { conv.forward(Tensor{Shape{3, 8}}); }, "x: expected");
  expect_error([&] { (void)SpatialDepthWiseConvolution(QkvConv::kPerChannel, 0, 4, 1, c); }, "kernel_size: expected >= 2");
  expect_error([&] { (void)SpatialDepthWiseConvolution(QkvConv::kPerChannel, 0, 4, 4, c); }, "shape mismatches");
  expect_error([&] { (void)SpatialDepthWiseConvolution(QkvConv::kNone, 0, 4, 3, c); }, "conv layout");
  StateDict ph;
  add_conv_params(ph, "", QkvConv::kPerHead, 2, 4, 3, 91);
  const SpatialDepthWiseConvolution per_head(QkvConv::kPerHead, 2, 4, 3, ph);
  expect_error([&] { per_head.forward(Tensor{Shape{3, 1, 3, 4}}); }, "expected shape (S, B, 2, 4)");
}

}  // namespace
}  // namespace tokenmix
