// HyperMixing: property tests against a plain float64 reference of SPEC section 4, reference-case
// properties, the sliding-window stream (== stream_reference for every chunking, save/restore,
// reset_row, no allocation per push) and the error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>


#include "alloc/alloc_counter.h"
#include "test_util.h"
#include "tokenmix/io/safetensors.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/layers/hypermixing.h"

namespace tokenmix {
namespace {

using test::all_close;
using test::bit_equal;
using test::expect_error;
using test::run_stream;
using test::slice_time;

struct Config {
  int64_t E = 16, hs = 32, H = 1;
  bool tied = false, fixtm = false;
  int64_t max_length = 64;
  int64_t d() const { return E / H; }
  int64_t K() const { return fixtm ? hs : hs / H; }
  HyperMixingOptions options() const {
    HyperMixingOptions o;
    o.input_output_dim = E;
    o.hypernet_size = hs;
    o.num_heads = H;
    o.tied = tied;
    o.fix_tm_hidden_size = fixtm;
    o.max_length = max_length;
    return o;
  }
};

// float64 sinusoidal table (max_length, E), SPEC section 6.
std::vector<double> sinusoid(int64_t rows, int64_t E) {
  std::vector<double> pe(rows * E);
  for (int64_t p = 0; p < rows; ++p)
    for (int64_t i = 0; i < E / 2; ++i) {
      const double arg = p * std::exp(2.0 * i * (-std::log(10000.0) / E));
      pe[p * E + 2 * i] = std::sin(arg);
      pe[p * E + 2 * i + 1] = std::cos(arg);
    }
  return pe;
}

// Random upstream-style state_dict: N(0, 0.3²) parameters, layer_norm.weight = 1 + 0.3·N(0, 1), the
// sinusoidal pe (when with_pe), tied entries duplicated (when tied and with_w2).
StateDict make_state_dict(const Config& c, uint32_t seed, bool with_pe = true, bool with_w2 = true) {
  StateDict sd;
  const int64_t H = c.H, d = c.d(), K = c.K();
  uint32_t s = seed * 100;
  for (const char* g : {"w1", "w2"}) {
    const std::string p = std::string("hyper.") + g + "_gen.";
    if (c.tied && std::string(g) == "w2") {
      if (with_w2)
        for (const char* k : {"fc1_weights", "fc1_biases", "fc2_weights", "fc2_biases"})
          sd.set(p + k, sd.get(std::string("hyper.w1_gen.") + k).clone());
      continue;
    }
    sd.set(p + "fc1_weights", test::random_tensor(Shape{H, d, d}, ++s, 0.3f));
    sd.set(p + "fc1_biases", test::random_tensor(Shape{H, d}, ++s, 0.3f));
    sd.set(p + "fc2_weights", test::random_tensor(Shape{H, K, d}, ++s, 0.3f));
    sd.set(p + "fc2_biases", test::random_tensor(Shape{H, K}, ++s, 0.3f));
  }
  Tensor lw = test::random_tensor(Shape{c.E}, ++s, 0.3f);
  for (auto& v : lw) v += 1.f;
  sd.set("layer_norm.weight", lw);
  sd.set("layer_norm.bias", test::random_tensor(Shape{c.E}, ++s, 0.3f));
  if (with_pe) {
    const auto pe = sinusoid(c.max_length, c.E);
    Tensor t{Shape{1, c.max_length, c.E}};
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(pe[i]);
    sd.set("positional_encoding.pe", t);
  }
  return sd;
}

double gelu(double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }

// Plain float64 evaluation of SPEC section 4, straight loops over (b, h, t, k, c).
Tensor reference_forward(const StateDict& sd, const Config& c, const Tensor& x, const Mask& kpm = {}) {
  const int64_t B = x.dim(0), T = x.dim(1), E = c.E, H = c.H, d = c.d(), K = c.K();
  std::vector<double> pe = sinusoid(c.max_length, E);
  if (sd.contains("positional_encoding.pe"))
    for (int64_t i = 0; i < c.max_length * E; ++i) pe[i] = sd.get("positional_encoding.pe").data()[i];
  const std::string g2 = c.tied ? "hyper.w1_gen." : "hyper.w2_gen.";
  Tensor y{Shape{B, T, E}};
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> m(T, 1.0), xt(T * E), o(T * E);
    for (int64_t t = 0; t < T; ++t) {
      if (!kpm.empty() && kpm.at(b, t)) m[t] = 0.0;
      for (int64_t e = 0; e < E; ++e) xt[t * E + e] = x.at(b, t, e) * m[t];
    }
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> W[2];
      for (int g = 0; g < 2; ++g) {
        const std::string p = g == 0 ? "hyper.w1_gen." : g2;
        const Tensor &A = sd.get(p + "fc1_weights"), &al = sd.get(p + "fc1_biases");
        const Tensor &Cw = sd.get(p + "fc2_weights"), &ga = sd.get(p + "fc2_biases");
        W[g].assign(T * K, 0.0);
        for (int64_t t = 0; t < T; ++t) {
          std::vector<double> a(d);
          for (int64_t i = 0; i < d; ++i) {
            double s = al.at(h, i);
            for (int64_t j = 0; j < d; ++j) s += A.at(h, i, j) * (xt[t * E + h * d + j] + pe[t * E + h * d + j]);
            a[i] = gelu(s);
          }
          for (int64_t k = 0; k < K; ++k) {
            double s = ga.at(h, k);
            for (int64_t i = 0; i < d; ++i) s += Cw.at(h, k, i) * a[i];
            W[g][t * K + k] = s * m[t];
          }
        }
      }
      for (int64_t ch = 0; ch < d; ++ch) {
        std::vector<double> G(K);
        for (int64_t k = 0; k < K; ++k) {
          double s = 0;
          for (int64_t t = 0; t < T; ++t) s += xt[t * E + h * d + ch] * W[0][t * K + k];
          G[k] = gelu(s);
        }
        for (int64_t t = 0; t < T; ++t) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += W[1][t * K + k] * G[k];
          o[t * E + h * d + ch] = s;
        }
      }
    }
    const Tensor &lw = sd.get("layer_norm.weight"), &lb = sd.get("layer_norm.bias");
    for (int64_t t = 0; t < T; ++t) {
      double mean = 0, var = 0;
      for (int64_t e = 0; e < E; ++e) mean += o[t * E + e] / E;
      for (int64_t e = 0; e < E; ++e) var += (o[t * E + e] - mean) * (o[t * E + e] - mean) / E;
      for (int64_t e = 0; e < E; ++e)
        y.at(b, t, e) = static_cast<float>((o[t * E + e] - mean) / std::sqrt(var + 1e-5) * lw.at(e) + lb.at(e));
    }
  }
  return y;
}

// ----------------------------------------------------------------------------------------------------
// Offline forward

TEST(HyperMixingTest, RandomConfigsMatchPlainReference) {
  std::mt19937 gen(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  const int64_t heads[] = {1, 2, 3, 5};
  for (int trial = 0; trial < 16; ++trial) {
    Config c;
    c.H = heads[trial % 4];
    c.E = c.H * 2 * pick(1, 4);  // even, divisible by H (odd head counts included)
    c.hs = c.H * pick(1, 12);
    c.tied = pick(0, 1);
    c.fixtm = pick(0, 1);
    c.max_length = pick(20, 30);
    const int64_t B = pick(1, 3), T = pick(1, 20);
    const StateDict sd = make_state_dict(c, trial + 1, /*with_pe=*/trial % 3 != 0);
    const HyperMixing layer(c.options(), sd);
    const Tensor x = test::random_tensor(Shape{B, T, c.E}, 1000 + trial);
    Mask kpm;
    if (trial % 2) {  // scattered padding, one fully padded row when B > 1
      kpm = Mask{Shape{B, T}};
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) kpm.at(b, t) = (b == 1) || pick(0, 3) == 0;
    }
    SCOPED_TRACE(::testing::Message() << "trial " << trial << " E " << c.E << " H " << c.H << " hs " << c.hs
                                      << " tied " << c.tied << " fixtm " << c.fixtm << " B " << B << " T " << T);
    EXPECT_TRUE(all_close(layer.forward(x, kpm), reference_forward(sd, c, x, kpm), 5e-5, 1e-4));
  }
}

TEST(HyperMixingTest, PaddedTokensGiveLayerNormBiasAndIgnoreTheirValues) {
  Config c{32, 48, 4};
  const StateDict sd = make_state_dict(c, 3);
  const HyperMixing layer(c.options(), sd);
  Tensor x = test::random_tensor(Shape{2, 9, 32}, 5);
  Mask kpm{Shape{2, 9}};
  for (int64_t t : {0, 4, 8}) kpm.at(0, t) = 1;
  for (int64_t t = 0; t < 9; ++t) kpm.at(1, t) = 1;
  const Tensor y = layer.forward(x, kpm);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 9; ++t)
      if (kpm.at(b, t)) {
        for (int64_t e = 0; e < 32; ++e) ASSERT_EQ(y.at(b, t, e), sd.get("layer_norm.bias").at(e));
      }
  // Finite garbage in padded slots changes nothing.
  for (int64_t e = 0; e < 32; ++e) x.at(0, 4, e) = 1e3f * (e + 1);
  EXPECT_TRUE(bit_equal(layer.forward(x, kpm), y));
  // As upstream (masking multiplies by 0), a NaN in a padded slot turns the whole batch row into NaN.
  Tensor xn = x.clone();
  xn.at(0, 4, 0) = std::numeric_limits<float>::quiet_NaN();
  const Tensor yn = layer.forward(xn, kpm);
  EXPECT_TRUE(std::isnan(yn.at(0, 1, 0)));
  EXPECT_TRUE(bit_equal(yn[1], y[1]));
  // Suffix padding: the valid tokens' outputs equal a run on the unpadded prefix.
  Mask suffix{Shape{1, 9}};
  for (int64_t t = 5; t < 9; ++t) suffix.at(0, t) = 1;
  const Tensor xs = x[0].clone().reshape(Shape{1, 9, 32});
  EXPECT_TRUE(all_close(slice_time(layer.forward(xs, suffix), 0, 5), layer.forward(slice_time(xs, 0, 5)), 1e-5,
                        1e-5));
}

TEST(HyperMixingTest, AttnWeightsAreZeros) {
  Config c{16, 16, 2};
  const HyperMixing layer(c.options(), make_state_dict(c, 4));
  Tensor attn;
  layer.forward(test::random_tensor(Shape{2, 5, 16}, 1), Mask{}, &attn);
  ASSERT_EQ(attn.shape(), (Shape{2, 5, 5}));
  for (float v : attn) EXPECT_EQ(v, 0.f);
}

TEST(HyperMixingTest, ReferenceCasesPaddedRowsAreExactlyTheBias) {
  for (const auto& path : test::reference_cases("hypermixing")) {
    SafetensorsFile f(path);
    if (!f.contains("in.kpm")) continue;
    const Mask kpm = f.mask("in.kpm");
    const Tensor bias = f.tensor("param.layer_norm.bias"), out = f.tensor("out.output");
    const int64_t E = bias.dim(0);
    for (int64_t i = 0; i < kpm.numel(); ++i)
      if (kpm.data()[i]) {
        for (int64_t e = 0; e < E; ++e) ASSERT_EQ(out.data()[i * E + e], bias.at(e)) << path;
      }
  }
}

TEST(HyperMixingTest, SinusoidalTableMatchesTheStoredBuffer) {
  // e16_h1_b1_t7 stores the default (1, 3000, 16) table.
  const std::string path = std::string(TOKENMIX_REFERENCE_DIR) + "/hypermixing/hypermixing_e16_h1_b1_t7.safetensors";
  SafetensorsFile f(path);
  StateDict full = StateDict::from_file(f, "param."), no_pe;
  for (const auto& k : full.keys())
    if (k != "positional_encoding.pe") no_pe.set(k, full.get(k));
  HyperMixingOptions o;
  o.input_output_dim = 16;
  o.hypernet_size = 32;
  const HyperMixing computed(o, no_pe), loaded(o, full);
  EXPECT_EQ(computed.positional_table().shape(), (Shape{3000, 16}));
  EXPECT_LT(max_abs_diff(computed.positional_table(), loaded.positional_table()), 1e-5f);
  EXPECT_TRUE(all_close(computed.forward(f.tensor("in.x")), f.tensor("out.output"), 2e-5, 1e-4));
}

TEST(HyperMixingTest, TiedAliasesMayBeAbsentButMustMatch) {
  Config c{16, 32, 2};
  c.tied = true;
  const Tensor x = test::random_tensor(Shape{1, 6, 16}, 9);
  const StateDict with = make_state_dict(c, 5), without = make_state_dict(c, 5, true, false);
  EXPECT_EQ(with.keys().size(), 11u);
  EXPECT_TRUE(bit_equal(HyperMixing(c.options(), with).forward(x), HyperMixing(c.options(), without).forward(x)));
  StateDict bad = make_state_dict(c, 5);
  Tensor w = bad.get("hyper.w2_gen.fc2_biases").clone();
  w.data()[0] += 1.f;
  bad.set("hyper.w2_gen.fc2_biases", w);
  expect_error([&] { HyperMixing(c.options(), bad); }, "'hyper.w2_gen.fc2_biases' differs");
  // Untied: w2_gen is required.
  c.tied = false;
  expect_error([&] { HyperMixing(c.options(), without); }, "missing keys");
}

// ----------------------------------------------------------------------------------------------------
// Errors

TEST(HyperMixingTest, ConfigErrors) {
  const StateDict sd = make_state_dict(Config{16, 32, 2}, 1);
  auto make = [&](int64_t E, int64_t hs, int64_t H, int64_t max_length) {
    HyperMixingOptions o;
    o.input_output_dim = E;
    o.hypernet_size = hs;
    o.num_heads = H;
    o.max_length = max_length;
    HyperMixing layer(o, sd);
  };
  expect_error([&] { make(0, 32, 1, 64); }, "HyperMixing: input_output_dim: expected >= 2, got 0");
  expect_error([&] { make(15, 30, 1, 64); }, "input_output_dim: expected an even size");
  expect_error([&] { make(16, 32, 0, 64); }, "num_heads: expected >= 1, got 0");
  expect_error([&] { make(18, 36, 4, 64); }, "input_output_dim (18) must be divisible by num_heads (4)");
  expect_error([&] { make(16, 0, 2, 64); }, "hypernet_size: expected >= 1, got 0");
  expect_error([&] { make(16, 33, 2, 64); }, "hypernet_size (33) must be divisible by num_heads (2)");
  expect_error([&] { make(16, 32, 2, 0); }, "max_length: expected 1 <= max_length <= 1048576, got 0");
}

TEST(HyperMixingTest, StateDictErrors) {
  Config c{16, 32, 2};
  StateDict missing;
  const StateDict full = make_state_dict(c, 1);
  for (const auto& k : full.keys())
    if (k != "hyper.w2_gen.fc1_biases") missing.set(k, full.get(k));
  missing.set("extra.weight", Tensor{Shape{2}});
  try {
    HyperMixing(c.options(), missing);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("missing keys [hyper.w2_gen.fc1_biases]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected keys [extra.weight]"), std::string::npos) << msg;
  }
  // A checkpoint built with another max_length (pe rows) or another fix_tm_hidden_size.
  Config other = c;
  other.max_length = 40;
  expect_error([&] { HyperMixing(other.options(), full); }, "positional_encoding.pe: expected (1, 40, 16), got (1, 64, 16)");
  other = c;
  other.fixtm = true;
  expect_error([&] { HyperMixing(other.options(), full); }, "hyper.w1_gen.fc2_weights: expected (2, 32, 8), got (2, 16, 8)");
}

TEST(HyperMixingTest, ForwardErrors) {
  Config c{16, 32, 2};
  c.max_length = 8;
  const HyperMixing layer(c.options(), make_state_dict(c, 1));
  expect_error([&] { layer.forward(Tensor{Shape{3, 16}}); }, "HyperMixing::forward: x: expected shape (B, T, 16), got (3, 16)");
  expect_error([&] { layer.forward(Tensor{Shape{2, 3, 12}}); }, "HyperMixing::forward: x: expected shape (B, T, 16), got (2, 3, 12)");
  expect_error([&] { layer.forward(Tensor{Shape{2, 9, 16}}); },
               "x: expected T <= max_length (8), got T = 9 (upstream raises RuntimeError: The size of tensor a (9) "
               "must match the size of tensor b (8) at non-singleton dimension 1)");
  EXPECT_NO_THROW(layer.forward(Tensor{Shape{2, 8, 16}}));
  const Tensor x{Shape{2, 5, 16}};
  expect_error([&] { layer.forward(x, Mask{Shape{5}}); }, "key_padding_mask: expected shape (2, 5), got (5");
  expect_error([&] { layer.forward(x, Mask{Shape{2, 5, 1}}); }, "key_padding_mask: expected shape (2, 5), got (2, 5, 1)");
  expect_error([&] { layer.forward(x, Mask{Shape{1, 5}}); }, "key_padding_mask: expected shape (2, 5), got (1, 5)");
  expect_error([&] { layer.forward(Tensor{Shape{2, 0, 16}}); }, "expected B >= 1 and T >= 1");
}

// ----------------------------------------------------------------------------------------------------
// Sliding-window stream

struct StreamSetup {
  Config c;
  StateDict sd;
  std::unique_ptr<HyperMixing> layer;
  explicit StreamSetup(Config cfg, uint32_t seed = 11)
      : c(cfg), sd(make_state_dict(cfg, seed)), layer(std::make_unique<HyperMixing>(cfg.options(), sd)) {}
};

TEST(HyperMixingTest, StreamReferenceIsForwardPerWindow) {
  StreamSetup s(Config{12, 18, 3});
  const Tensor x = test::random_tensor(Shape{2, 9, 12}, 3);
  StreamOptions o;
  o.window = 4;
  o.position = 1;
  const Tensor r = s.layer->stream_reference(x, o);
  ASSERT_EQ(r.shape(), (Shape{2, 6, 12}));
  for (int64_t i = 0; i < 6; ++i) {
    const Tensor w = reference_forward(s.sd, s.c, slice_time(x, i, 4));
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t e = 0; e < 12; ++e) EXPECT_NEAR(r.at(b, i, e), w.at(b, 1, e), 5e-5);
  }
  o.window = 10;
  EXPECT_EQ(s.layer->stream_reference(x, o).shape(), (Shape{2, 0, 12}));
}

TEST(HyperMixingTest, StreamMatchesReferenceForEveryChunking) {
  const int64_t L = 6, T = 6 * L + 2;  // 33 windows
  for (int variant = 0; variant < 4; ++variant) {
    Config c{16, 32, 2};
    if (variant == 1) c = Config{20, 15, 5};  // odd head count: d = 4, K = 3
    c.tied = variant == 2;
    c.fixtm = variant == 3;
    StreamSetup s(c, 20 + variant);
    const Tensor x = test::random_tensor(Shape{3, T, c.E}, 40 + variant);
    for (int64_t position : {-1, 0, 2}) {
      StreamOptions o;
      o.window = L;
      o.position = position;
      const Tensor ref = s.layer->stream_reference(x, o);
      ASSERT_EQ(ref.dim(1), T - L + 1);
      for (const auto& chunks : std::vector<std::vector<int64_t>>{{1}, {3}, {L}, {2, 1, 5, L, 7, 3}}) {
        auto st = s.layer->open_stream(3, o);
        SCOPED_TRACE(::testing::Message() << "variant " << variant << " position " << position << " chunk "
                                          << chunks[0] << " of " << chunks.size());
        EXPECT_TRUE(all_close(run_stream(*st, x, chunks), ref, 2e-5, 1e-4));
      }
    }
  }
}

TEST(HyperMixingTest, StreamWarmupAndOutputAlignment) {
  StreamSetup s(Config{16, 32, 2});
  StreamOptions o;
  o.window = 4;
  auto st = s.layer->open_stream(2, o);
  const Tensor x = test::random_tensor(Shape{2, 8, 16}, 1);
  EXPECT_EQ(st->push(slice_time(x, 0, 2)).shape(), (Shape{2, 0, 16}));
  EXPECT_EQ(st->push(slice_time(x, 2, 1)).shape(), (Shape{2, 0, 16}));
  const Tensor y = st->push(slice_time(x, 3, 3));  // completes windows ending at tokens 3, 4, 5
  ASSERT_EQ(y.shape(), (Shape{2, 3, 16}));
  EXPECT_TRUE(all_close(y, slice_time(s.layer->stream_reference(slice_time(x, 0, 6), o), 0, 3), 2e-5, 1e-4));
  EXPECT_EQ(dynamic_cast<HyperMixingStream&>(*st).seen(1), 6);
}

TEST(HyperMixingTest, StreamSaveRestoreContinuesBitForBit) {
  Config c{18, 27, 3};
  StreamSetup s(c);
  StreamOptions o;
  o.window = 5;
  o.position = 3;
  const Tensor x = test::random_tensor(Shape{2, 30, 18}, 8);
  const std::string path = test::temp_path("hypermixing_stream.safetensors");
  for (int64_t cut : {3, 12}) {  // mid warm-up and mid-stream
    auto a = s.layer->open_stream(2, o);
    run_stream(*a, slice_time(x, 0, cut), {2});
    a->save(path);
    auto b = s.layer->open_stream(2, o);
    b->push(slice_time(x, 0, 7));  // state to be overwritten
    b->restore(path);
    const Tensor rest = slice_time(x, cut, 30 - cut);
    EXPECT_TRUE(bit_equal(run_stream(*a, rest, {1, 4}), run_stream(*b, rest, {1, 4}))) << "cut " << cut;
  }
  // A state file of another window / position / layer is rejected.
  auto a = s.layer->open_stream(2, o);
  a->push(slice_time(x, 0, 6));
  a->save(path);
  StreamOptions other = o;
  other.position = 2;
  expect_error([&] { s.layer->open_stream(2, other)->restore(path); },
               "HyperMixingStream::restore: " + path + ": 'config' (batch, E, H, K, tied, window, position) does not match");
  expect_error([&] { s.layer->open_stream(3, o)->restore(path); }, "does not match this stream");
  std::filesystem::remove(path);
}

TEST(HyperMixingTest, StreamResetRowLeavesOtherRowsUntouched) {
  StreamSetup s(Config{16, 24, 4});
  StreamOptions o;
  o.window = 4;
  const Tensor x = test::random_tensor(Shape{2, 20, 16}, 12), x2 = test::random_tensor(Shape{2, 20, 16}, 13);
  auto plain = s.layer->open_stream(2, o);
  const Tensor full = run_stream(*plain, x, {3});  // (2, 17, 16)

  auto st = s.layer->open_stream(2, o);
  run_stream(*st, slice_time(x, 0, 9), {3});  // 6 outputs
  st->reset_row(1);
  // Row 0 continues with x; row 1 starts a new sequence x2.
  Tensor mixed = slice_time(x, 9, 11);
  for (int64_t t = 0; t < 11; ++t) std::memcpy(&mixed.at(1, t, 0), &x2.at(1, t, 0), sizeof(float) * 16);
  const Tensor y = run_stream(*st, mixed, {3});  // 11 outputs for row 0, 8 for row 1 (right-aligned)
  ASSERT_EQ(y.shape(), (Shape{2, 11, 16}));
  EXPECT_TRUE(bit_equal(y[0], slice_time(full, 6, 11)[0]));
  // Row 1: zeros until its new window fills, then the reference of its new sequence.
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t e = 0; e < 16; ++e) EXPECT_EQ(y.at(1, i, e), 0.f) << i;
  const Tensor ref1 = s.layer->stream_reference(slice_time(x2, 0, 11), o);
  for (int64_t i = 0; i < 8; ++i)
    for (int64_t e = 0; e < 16; ++e) EXPECT_NEAR(y.at(1, i + 3, e), ref1.at(1, i, e), 2e-5);
  // reset() forgets every row.
  st->reset();
  EXPECT_EQ(st->push(slice_time(x, 0, 3)).dim(1), 0);
  expect_error([&] { st->reset_row(2); }, "HyperMixingStream::reset_row: b: expected 0 <= b < 2, got 2");
}

// (on the reference GEMM backend: oneDNN's execution allocates a small argument map per call, see
// test::expect_no_allocations_per_push)
TEST(HyperMixingTest, StreamPushDoesNotAllocate) {
  for (bool tied : {false, true}) {
    Config c{16, 32, 2};
    c.tied = tied;
    StreamSetup s(c);
    HyperMixingOptions ref = c.options();
    ref.linear = {Precision::kFp32, GemmBackend::kReference};
    s.layer = std::make_unique<HyperMixing>(ref, s.sd);
    StreamOptions o;
    o.window = 5;
    o.position = 1;
    auto st = s.layer->open_stream(2, o);
    const Tensor x = test::random_tensor(Shape{2, 40, 16}, 2);
    st->push(slice_time(x, 0, 4));  // first chunk of the largest size
    std::vector<Tensor> chunks;
    for (int64_t t = 4; t + 4 <= 40; t += 4) {
      chunks.push_back(slice_time(x, t, 3));
      chunks.push_back(slice_time(x, t + 3, 1));
    }
    const int64_t before = alloc::allocation_count();
    for (const auto& ch : chunks) st->push(ch);
    EXPECT_EQ(alloc::allocation_count() - before, 0) << "tied " << tied;
  }
}

TEST(HyperMixingTest, StreamErrors) {
  Config c{16, 32, 2};
  c.max_length = 10;
  StreamSetup s(c);
  StreamOptions o;
  expect_error([&] { s.layer->open_stream(1, o); },
               "HyperMixing::open_stream: options.window: expected 1 <= window <= max_length (10), got 0");
  o.window = 11;
  expect_error([&] { s.layer->open_stream(1, o); }, "got 11");
  expect_error([&] { s.layer->stream_reference(Tensor{Shape{1, 12, 16}}, o); },
               "HyperMixing::stream_reference: options.window: expected 1 <= window <= max_length (10), got 11");
  o.window = 4;
  o.position = 4;
  expect_error([&] { s.layer->open_stream(1, o); },
               "options.position: expected -1 (last) or 0 <= position < window (4), got 4");
  o.position = -2;
  expect_error([&] { s.layer->stream_reference(Tensor{Shape{1, 5, 16}}, o); }, "got -2");
  o.position = -1;
  expect_error([&] { s.layer->open_stream(0, o); }, "HyperMixing::open_stream: batch: expected 1 <= batch <= 1048576, got 0");
  auto st = s.layer->open_stream(2, o);
  expect_error([&] { st->push(Tensor{Shape{1, 3, 16}}); },
               "HyperMixingStream::push: chunk: expected shape (2, C, 16) with C >= 1, got (1, 3, 16)");
  expect_error([&] { st->push(Tensor{Shape{2, 3, 8}}); }, "got (2, 3, 8)");
  expect_error([&] { st->push(Tensor{Shape{2, 16}}); }, "got (2, 16)");
  expect_error([&] { s.layer->stream_reference(Tensor{Shape{1, 5, 8}}, o); },
               "HyperMixing::stream_reference: x: expected shape (B, T, 16)");
}

}  // namespace
}  // namespace tokenmix
