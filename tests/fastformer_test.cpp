// FastSelfAttention (ESPnet Fastformer): properties against a plain float64 re-statement of SPEC §4,
// mask conventions, the sliding-window stream (chunking, save/restore, reset_row) and error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>

#include "test_util.h"
#include "tokenmix/layers/fastformer.h"

namespace tokenmix {
namespace {

using test::add_random;
using test::all_close;
using test::expect_error;
using test::random_tensor;
using test::run_stream;
using test::slice_time;

StateDict random_params(int64_t E, int64_t H, uint32_t seed) {
  StateDict sd;
  add_random(sd, "query.weight", Shape{E, E}, seed + 1);
  add_random(sd, "query.bias", Shape{E}, seed + 2);
  add_random(sd, "query_att.weight", Shape{H, E}, seed + 3);
  add_random(sd, "query_att.bias", Shape{H}, seed + 4);
  add_random(sd, "key.weight", Shape{E, E}, seed + 5);
  add_random(sd, "key.bias", Shape{E}, seed + 6);
  add_random(sd, "key_att.weight", Shape{H, E}, seed + 7);
  add_random(sd, "key_att.bias", Shape{H}, seed + 8);
  add_random(sd, "transform.weight", Shape{E, E}, seed + 9);
  add_random(sd, "transform.bias", Shape{E}, seed + 10);
  return sd;
}

// SPEC §4 literally, in float64: fmin fill, softmax, zero the padded weights; p materialised.
// keep(b, h, t) -> true = keep.
Tensor reference(const Tensor& x, int64_t H, const StateDict& sd, const std::function<bool(int64_t, int64_t, int64_t)>& keep) {
  const int64_t B = x.dim(0), T = x.dim(1), E = x.dim(2), d = E / H;
  const double sq = std::sqrt(static_cast<double>(d)), fmin = -3.4028234663852886e38;
  auto lin = [&](const std::string& name, const std::vector<double>& v, int64_t out) {
    const Tensor& W = sd.get(name + ".weight");
    const Tensor& b = sd.get(name + ".bias");
    std::vector<double> y(out);
    for (int64_t o = 0; o < out; ++o) {
      double s = b.at(o);
      for (size_t i = 0; i < v.size(); ++i) s += static_cast<double>(W.at(o, static_cast<int64_t>(i))) * v[i];
      y[o] = s;
    }
    return y;
  };
  auto pool = [&](int64_t b, const std::vector<std::vector<double>>& logits) {  // logits[t][h] -> w[h][t]
    std::vector<std::vector<double>> w(H, std::vector<double>(T));
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> l(T);
      for (int64_t t = 0; t < T; ++t) l[t] = keep(b, h, t) ? logits[t][h] : fmin;
      double mx = l[0];
      for (int64_t t = 1; t < T; ++t) mx = std::max(mx, l[t]);
      double sum = 0;
      for (int64_t t = 0; t < T; ++t) sum += (w[h][t] = std::exp(l[t] - mx));
      for (int64_t t = 0; t < T; ++t) w[h][t] = keep(b, h, t) ? w[h][t] / sum : 0.0;
    }
    return w;
  };
  Tensor y{Shape{B, T, E}};
  for (int64_t b = 0; b < B; ++b) {
    std::vector<std::vector<double>> q(T), k(T), a(T), p(T), c(T);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> xt(x.data() + (b * T + t) * E, x.data() + (b * T + t + 1) * E);
      q[t] = lin("query", xt, E);
      k[t] = lin("key", xt, E);
      a[t] = lin("query_att", q[t], H);
      for (auto& v : a[t]) v /= sq;
    }
    const auto alpha = pool(b, a);
    std::vector<double> gq(E, 0.0), gk(E, 0.0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t t = 0; t < T; ++t) gq[e] += alpha[e / d][t] * q[t][e];
    for (int64_t t = 0; t < T; ++t) {
      p[t].resize(E);
      for (int64_t e = 0; e < E; ++e) p[t][e] = k[t][e] * gq[e];
      c[t] = lin("key_att", p[t], H);
      for (auto& v : c[t]) v /= sq;
    }
    const auto beta = pool(b, c);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t t = 0; t < T; ++t) gk[e] += beta[e / d][t] * p[t][e];
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> u(E);
      for (int64_t e = 0; e < E; ++e) u[e] = gk[e] * q[t][e];
      const auto o = lin("transform", u, E);
      for (int64_t e = 0; e < E; ++e) y.at(b, t, e) = static_cast<float>(o[e] + q[t][e]);
    }
  }
  return y;
}

TEST(FastformerTest, ForwardMatchesReferenceOnRandomShapesAndMasks) {
  std::mt19937 gen(7);
  for (int trial = 0; trial < 24; ++trial) {
    const int64_t H = std::vector<int64_t>{1, 3, 5, 2}[trial % 4];
    const int64_t d = 1 + static_cast<int64_t>(gen() % 3), E = H * d;
    const int64_t B = 1 + static_cast<int64_t>(gen() % 3), T = 1 + static_cast<int64_t>(gen() % 9);
    const StateDict sd = random_params(E, H, 100 * trial);
    const FastSelfAttention layer(E, H, 0.1, sd);
    const Tensor x = random_tensor(Shape{B, T, E}, 1000 + trial);
    const std::string tag = "trial " + std::to_string(trial);
    // No mask.
    EXPECT_TRUE(all_close(layer.forward_upstream(x, Mask{}),
                          reference(x, H, sd, [](int64_t, int64_t, int64_t) { return true; }), 2e-5f, 2e-5f))
        << tag + " nomask";
    EXPECT_TRUE(all_close(layer.forward(x), layer.forward_upstream(x, Mask{}), 0.f, 0.f)) << tag + " unified nomask";
    // Random (B, 1, T) keep mask, some rows fully padded; the unified API gets the inverse.
    Mask keep{Shape{B, 1, T}}, pad{Shape{B, T}};
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        keep.at(b, 0, t) = (trial % 5 == 0 && b == B - 1) ? 0 : (gen() % 3 != 0);
        pad.at(b, t) = !keep.at(b, 0, t);
      }
    const Tensor want = reference(x, H, sd, [&](int64_t b, int64_t, int64_t t) { return keep.at(b, 0, t) != 0; });
    EXPECT_TRUE(all_close(layer.forward_upstream(x, keep), want, 2e-5f, 2e-5f)) << tag + " keep mask";
    EXPECT_TRUE(all_close(layer.forward(x, pad), want, 2e-5f, 2e-5f)) << tag + " key_padding_mask";
    // Per-head (B, H, T) mask and a batch-broadcast (1, 1, T) mask.
    Mask per_head{Shape{B, H, T}}, shared{Shape{1, 1, T}};
    for (auto& v : per_head) v = gen() % 4 != 0;
    for (auto& v : shared) v = gen() % 2;
    EXPECT_TRUE(all_close(
        layer.forward_upstream(x, per_head),
        reference(x, H, sd, [&](int64_t b, int64_t h, int64_t t) { return per_head.at(b, h, t) != 0; }), 2e-5f, 2e-5f))
        << tag + " per-head mask";
    EXPECT_TRUE(all_close(layer.forward_upstream(x, shared),
                          reference(x, H, sd, [&](int64_t, int64_t, int64_t t) { return shared.at(0, 0, t) != 0; }),
                          2e-5f, 2e-5f))
        << tag + " shared mask";
  }
}

TEST(FastformerTest, LongSequencesMatchReference) {
  // T >= 2048: a single sequence pools its heads in parallel and the H-wide logit GEMMs split their
  // rows over the threads; B = 2 pools the rows in parallel instead. Per-head mask.
  const int64_t E = 8, H = 4, T = 2100;
  const StateDict sd = random_params(E, H, 77);
  const FastSelfAttention layer(E, H, 0.1, sd);
  std::mt19937 gen(3);
  for (int64_t B : {1, 2}) {
    const Tensor x = random_tensor(Shape{B, T, E}, 500 + B);
    Mask per_head{Shape{B, H, T}};
    for (auto& v : per_head) v = gen() % 5 != 0;
    const Tensor want =
        reference(x, H, sd, [&](int64_t b, int64_t h, int64_t t) { return per_head.at(b, h, t) != 0; });
    EXPECT_TRUE(all_close(layer.forward_upstream(x, per_head), want, 2e-5f, 2e-5f)) << "B = " << B;
  }
}

TEST(FastformerTest, FullyPaddedSequenceGivesProjectedQueryPlusTransformBias) {
  const int64_t E = 6, H = 3, B = 2, T = 4;
  const StateDict sd = random_params(E, H, 5);
  const FastSelfAttention layer(E, H, 0.0, sd);
  const Tensor x = random_tensor(Shape{B, T, E}, 6);
  Mask pad{Shape{B, T}};
  for (int64_t t = 0; t < T; ++t) pad.at(1, t) = 1;  // row 1 fully padded, row 0 not at all
  pad.at(0, 2) = 1;                                  // row 0 partially padded
  const Tensor y = layer.forward(x, pad);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < E; ++o) {
      double q = sd.get("query.bias").at(o);
      for (int64_t i = 0; i < E; ++i) q += static_cast<double>(sd.get("query.weight").at(o, i)) * x.at(1, t, i);
      EXPECT_NEAR(y.at(1, t, o), q + sd.get("transform.bias").at(o), 1e-5) << t << "," << o;
      EXPECT_TRUE(std::isfinite(y.at(0, t, o)));
    }
  // A padded position does not influence the valid ones.
  Tensor x2 = x.clone();
  for (int64_t e = 0; e < E; ++e) x2.at(0, 2, e) += 10.f;
  const Tensor y2 = layer.forward(x2, pad);
  for (int64_t t : {0, 1, 3})
    for (int64_t e = 0; e < E; ++e) EXPECT_NEAR(y2.at(0, t, e), y.at(0, t, e), 1e-5);
}

TEST(FastformerTest, SingleTokenIsTransformOfKeyTimesQuerySquaredPlusQuery) {
  const int64_t E = 5, H = 5;
  const StateDict sd = random_params(E, H, 11);
  const FastSelfAttention layer(E, H, 0.0, sd);
  const Tensor x = random_tensor(Shape{1, 1, E}, 12);
  auto proj = [&](const std::string& n, int64_t o) {
    double s = sd.get(n + ".bias").at(o);
    for (int64_t i = 0; i < E; ++i) s += static_cast<double>(sd.get(n + ".weight").at(o, i)) * x.at(0, 0, i);
    return s;
  };
  std::vector<double> q(E), u(E);
  for (int64_t e = 0; e < E; ++e) q[e] = proj("query", e), u[e] = proj("key", e) * q[e] * q[e];
  const Tensor y = layer.forward(x);
  for (int64_t o = 0; o < E; ++o) {
    double s = sd.get("transform.bias").at(o) + q[o];
    for (int64_t i = 0; i < E; ++i) s += sd.get("transform.weight").at(o, i) * u[i];
    EXPECT_NEAR(y.at(0, 0, o), s, 1e-5);
  }
}

TEST(FastformerTest, UnifiedForwardReproducesPaddedReferenceCase) {
  for (const auto& path : test::reference_cases("fastformer")) {
    SafetensorsFile f(path);
    if (!f.contains("in.mask")) continue;
    const Tensor x = f.tensor("in.xs_pad");
    const Mask keep = f.mask("in.mask");
    const int64_t B = x.dim(0), T = x.dim(1), E = x.dim(2);
    const int64_t H = f.tensor("param.query_att.bias").dim(0);
    const FastSelfAttention layer(E, H, 0.0, StateDict::from_file(f, "param."));
    Mask pad{Shape{B, T}};
    for (int64_t i = 0; i < B * T; ++i) pad.data()[i] = !keep.data()[i];
    EXPECT_TRUE(all_close(layer.forward(x, pad), f.tensor("out.y"), 1e-5f, 1e-5f)) << test::case_name(path);
  }
}

TEST(FastformerTest, EmptyTimeAxisGivesEmptyOutput) {
  const FastSelfAttention layer(4, 2, 0.0, random_params(4, 2, 1));
  EXPECT_EQ(layer.forward(Tensor{Shape{2, 0, 4}}).shape(), (Shape{2, 0, 4}));
}

struct StreamCase {
  int64_t E, H, B, L, P;
};

TEST(FastformerTest, StreamMatchesStreamReferenceForEveryChunking) {
  for (const StreamCase& sc : {StreamCase{6, 3, 2, 4, -1}, StreamCase{5, 5, 1, 3, 0}, StreamCase{8, 2, 3, 5, 2},
                               StreamCase{4, 1, 2, 1, -1}}) {
    const StateDict sd = random_params(sc.E, sc.H, 40 + sc.L);
    const FastSelfAttention layer(sc.E, sc.H, 0.0, sd);
    const int64_t T = sc.L + 6;  // 7 full windows
    const Tensor x = random_tensor(Shape{sc.B, T, sc.E}, 50 + sc.L);
    const StreamOptions opts{0, sc.L, sc.P};
    const Tensor want = layer.stream_reference(x, opts);
    ASSERT_EQ(want.shape(), (Shape{sc.B, T - sc.L + 1, sc.E}));
    // The reference is the offline forward over each window at position P.
    const int64_t P = sc.P < 0 ? sc.L - 1 : sc.P;
    const Tensor w2 = layer.forward(slice_time(x, 2, sc.L));
    for (int64_t b = 0; b < sc.B; ++b)
      for (int64_t e = 0; e < sc.E; ++e) EXPECT_EQ(want.at(b, 2, e), w2.at(b, P, e));
    for (const auto& sizes : std::vector<std::vector<int64_t>>{{1}, {3}, {sc.L}, {2, 1, 4, 3}, {T}}) {
      auto s = layer.open_stream(sc.B, opts);
      EXPECT_TRUE(all_close(run_stream(*s, x, sizes), want, 1e-5f, 1e-5f))
          << "L=" + std::to_string(sc.L) + " chunk " + std::to_string(sizes[0]);
    }
  }
}

TEST(FastformerTest, FoldedKeyForwardEqualsTheStreamsExplicitKey) {
  // From T >= kFoldedKeyTokensPerHead·H tokens forward folds the key projection into the pooling; the
  // stream always forms k. A window of the whole sequence at position P must give forward's row P.
  const int64_t E = 64, H = 4, B = 2, T = 3 * FastSelfAttention::kFoldedKeyTokensPerHead * H;
  const FastSelfAttention layer(E, H, 0.0, random_params(E, H, 61));
  const Tensor x = random_tensor(Shape{B, T, E}, 62);
  const Tensor offline = layer.forward(x);
  for (int64_t P : {int64_t{0}, T / 2, T - 1}) {
    auto s = layer.open_stream(B, StreamOptions{0, T, P});
    const Tensor y = s->push(x);
    ASSERT_EQ(y.shape(), (Shape{B, 1, E}));  // one full window: one output per row
    EXPECT_TRUE(all_close(y, slice_time(offline, P, 1), 1e-5f, 1e-5f)) << "P = " << P;
  }
}

TEST(FastformerTest, StreamWarmUpEmitsNothingUntilTheWindowIsFull) {
  const FastSelfAttention layer(4, 2, 0.0, random_params(4, 2, 3));
  auto s = layer.open_stream(2, StreamOptions{0, 5, -1});
  const Tensor x = random_tensor(Shape{2, 6, 4}, 4);
  EXPECT_EQ(s->push(slice_time(x, 0, 3)).dim(1), 0);
  EXPECT_EQ(s->push(slice_time(x, 3, 1)).dim(1), 0);
  EXPECT_EQ(s->push(slice_time(x, 4, 2)).dim(1), 2);
  EXPECT_EQ(layer.stream_reference(slice_time(x, 0, 4), StreamOptions{0, 5, -1}).shape(), (Shape{2, 0, 4}));
}

TEST(FastformerTest, StreamBuffersAreReusedForRepeatedChunkSizes) {
  const FastSelfAttention layer(6, 3, 0.0, random_params(6, 3, 8));
  auto s = layer.open_stream(2, StreamOptions{0, 3, 1});
  const Tensor x = random_tensor(Shape{2, 4, 6}, 9);
  s->push(x);
  const float* p = s->push(x).data();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(s->push(x).data(), p);
    EXPECT_EQ(s->push(slice_time(x, 0, 1)).data(), p);
  }
}

TEST(FastformerTest, SaveRestoreContinuesBitForBit) {
  const int64_t E = 6, H = 3, B = 2, L = 4;
  const FastSelfAttention layer(E, H, 0.0, random_params(E, H, 21));
  const StreamOptions opts{0, L, 1};
  const Tensor x = random_tensor(Shape{B, 15, E}, 22);
  const auto path = test::temp_path("fastformer_stream.safetensors");
  for (int64_t split : {2, 5, 9}) {  // mid warm-up and mid stream
    auto a = layer.open_stream(B, opts);
    run_stream(*a, slice_time(x, 0, split), {2});
    a->save(path);
    auto b = layer.open_stream(B, opts);
    b->push(slice_time(x, 0, 3));  // state that restore must replace
    b->restore(path);
    const Tensor rest = slice_time(x, split, 15 - split);
    const Tensor ya = run_stream(*a, rest, {1, 3});
    const Tensor yb = run_stream(*b, rest, {1, 3});
    ASSERT_EQ(ya.shape(), yb.shape());
    EXPECT_EQ(std::memcmp(ya.data(), yb.data(), sizeof(float) * ya.numel()), 0) << "split " << split;
  }
  // Mismatching configuration or a foreign file.
  auto other = layer.open_stream(B, StreamOptions{0, L, -1});
  expect_error([&] { other->restore(path); }, "does not match this stream");
  SafetensorsWriter w;
  w.add_int64s("config", {1});
  const auto bad = test::temp_path("fastformer_bad.safetensors");
  w.write(bad);
  expect_error([&] { other->restore(bad); }, "not a FastSelfAttentionStream state file");
  std::filesystem::remove(path);
  std::filesystem::remove(bad);
}

TEST(FastformerTest, ResetRowRestartsOnlyThatRow) {
  const int64_t E = 6, H = 2, B = 3, L = 3;
  const FastSelfAttention layer(E, H, 0.0, random_params(E, H, 31));
  const StreamOptions opts{0, L, -1};
  const Tensor x = random_tensor(Shape{B, 12, E}, 32);
  auto s = layer.open_stream(B, opts);
  auto plain = layer.open_stream(B, opts);
  run_stream(*s, slice_time(x, 0, 5), {2});
  run_stream(*plain, slice_time(x, 0, 5), {2});
  s->reset_row(1);
  // Row 1 restarts at token 5: it is a fresh stream over x[:, 5:].
  const Tensor fresh_ref = layer.stream_reference(slice_time(x, 5, 7), opts);  // 5 windows
  auto& fs = dynamic_cast<FastSelfAttentionStream&>(*s);
  std::vector<float> row1;
  for (int64_t t = 5; t < 12; t += 2) {
    const int64_t C = std::min<int64_t>(2, 12 - t);
    const Tensor y = s->push(slice_time(x, t, C));
    const Tensor yp = plain->push(slice_time(x, t, C));
    ASSERT_EQ(y.shape(), yp.shape());
    for (int64_t b : {0, 2})
      for (int64_t i = 0; i < y.dim(1) * E; ++i)
        ASSERT_EQ(y.data()[b * y.dim(1) * E + i], yp.data()[b * y.dim(1) * E + i]);
    const int64_t n1 = fs.emitted(1), lead = y.dim(1) - n1;
    for (int64_t i = 0; i < lead * E; ++i) EXPECT_EQ(y.data()[y.dim(1) * E + i], 0.f);
    row1.insert(row1.end(), y.data() + (y.dim(1) + lead) * E, y.data() + 2 * y.dim(1) * E);
  }
  ASSERT_EQ(static_cast<int64_t>(row1.size()), fresh_ref.dim(1) * E);
  for (int64_t i = 0; i < fresh_ref.dim(1) * E; ++i)
    EXPECT_NEAR(row1[i], fresh_ref.data()[fresh_ref.dim(1) * E + i], 1e-5 * (1 + std::fabs(row1[i])));
  // reset() restarts every row.
  s->reset();
  EXPECT_EQ(s->push(slice_time(x, 0, 2)).dim(1), 0);
}

TEST(FastformerTest, ErrorPaths) {
  const StateDict sd = random_params(6, 3, 61);
  expect_error([&] { FastSelfAttention(6, 4, 0.0, sd); }, "not an integer multiple of attention_heads");
  expect_error([&] { FastSelfAttention(0, 1, 0.0, sd); }, "size: expected 1 <= size <= 65536, got 0");
  expect_error([&] { FastSelfAttention(6, 0, 0.0, sd); }, "attention_heads: expected >= 1");
  expect_error([&] { FastSelfAttention(6, 3, 1.5, sd); }, "dropout_rate: expected 0 <= p <= 1");
  expect_error([&] { FastSelfAttention(6, 2, 0.0, sd); }, "query_att.weight");  // mis-shaped (3, 6) vs (2, 6)
  StateDict missing = sd;
  missing = StateDict{};
  for (const auto& k : sd.keys())
    if (k != "transform.bias") missing.set(k, sd.get(k));
  missing.set("value.weight", Tensor{Shape{6, 6}});
  expect_error([&] { FastSelfAttention(6, 3, 0.0, missing); }, "transform.bias");
  expect_error([&] { FastSelfAttention(6, 3, 0.0, missing); }, "value.weight");

  const FastSelfAttention layer(6, 3, 0.0, sd);
  const Tensor x = random_tensor(Shape{2, 4, 6}, 62);
  expect_error([&] { layer.forward(random_tensor(Shape{2, 4, 5}, 1)); }, "FastSelfAttention::forward: x: expected shape");
  expect_error([&] { layer.forward_upstream(x, Mask{Shape{2, 4}}); }, "2-D masks are rejected");
  expect_error([&] { layer.forward_upstream(x, Mask{Shape{2, 1, 5}}); }, "mask: expected shape (2 or 1, 1 or 3, 4)");
  expect_error([&] { layer.forward_upstream(x, Mask{Shape{2, 2, 4}}); }, "mask: expected shape");
  expect_error([&] { layer.forward(x, Mask{Shape{2, 1, 4}}); }, "key_padding_mask: expected shape (2, 4)");
  expect_error([&] { layer.stream_reference(x, StreamOptions{}); }, "options.window: expected the window length 1 <= L <= 1048576, got 0");
  expect_error([&] { layer.open_stream(2, StreamOptions{0, 3, 3}); }, "options.position: expected -1 <= position < window");
  expect_error([&] { layer.open_stream(2, StreamOptions{0, 3, -2}); }, "options.position");
  expect_error([&] { layer.open_stream(0, StreamOptions{0, 3, -1}); }, "batch: expected 1 <= batch <= 1048576, got 0");
  auto s = layer.open_stream(2, StreamOptions{0, 3, -1});
  expect_error([&] { s->push(random_tensor(Shape{3, 1, 6}, 1)); }, "FastSelfAttentionStream::push: chunk: expected shape (2, C, 6)");
  expect_error([&] { s->push(Tensor{Shape{2, 0, 6}}); }, "with C >= 1");
  expect_error([&] { s->reset_row(2); }, "reset_row: b: expected 0 <= b < 2");
}

}  // namespace
}  // namespace tokenmix
