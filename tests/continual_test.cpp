// Tests of the continual family (SingleOutputMultiheadAttention, RetroactiveMultiheadAttention):
// forward() against a plain double-precision PyTorch-MHA reference kept here (random shapes, odd
// head counts, masks, bias_kv / zero_attn, kdim / vdim, layouts), streams against the offline window
// definition in every chunking, the upstream step API, save/restore, reset_row, long streams with
// large logits (where upstream's retroactive update overflows), and error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "test_util.h"
#include "tokenmix/kernels/permute.h"
#include "tokenmix/layers/continual_mha.h"

namespace tokenmix {
namespace {

using test::bit_equal;
using test::expect_error;
using test::random_tensor;
using test::run_stream;
using test::slice_time;

// ---- weights ----
StateDict make_weights(int64_t E, bool bias, uint32_t seed, float scale = 1.f, int64_t kdim = 0, int64_t vdim = 0,
                       bool bias_kv = false) {
  StateDict sd;
  const float s = scale / std::sqrt(static_cast<float>(E));
  if (kdim == 0 && vdim == 0) {
    sd.set("in_proj_weight", random_tensor(Shape{3 * E, E}, seed, s));
  } else {
    sd.set("q_proj_weight", random_tensor(Shape{E, E}, seed, s));
    sd.set("k_proj_weight", random_tensor(Shape{E, kdim ? kdim : E}, seed + 1, s));
    sd.set("v_proj_weight", random_tensor(Shape{E, vdim ? vdim : E}, seed + 2, s));
  }
  sd.set("out_proj.weight", random_tensor(Shape{E, E}, seed + 3, s));
  if (bias) {
    sd.set("in_proj_bias", random_tensor(Shape{3 * E}, seed + 4, 0.3f));
    sd.set("out_proj.bias", random_tensor(Shape{E}, seed + 5, 0.3f));
  }
  if (bias_kv) {
    sd.set("bias_k", random_tensor(Shape{1, 1, E}, seed + 6, 0.5f));
    sd.set("bias_v", random_tensor(Shape{1, 1, E}, seed + 7, 0.5f));
  }
  return sd;
}

ContinualMhaOptions opts(int64_t E, int64_t H, int64_t L) {
  ContinualMhaOptions o;
  o.embed_dim = E;
  o.num_heads = H;
  o.sequence_len = L;
  return o;
}

// ---- the simple reference: PyTorch 1.13 MHA in double, batch-first ----
// W (out, in) row r of a weight; returns x·Wᵀ + b for one row.
std::vector<double> lin(const float* x, int64_t in, const float* W, const float* b, int64_t out) {
  std::vector<double> y(out);
  for (int64_t o = 0; o < out; ++o) {
    double acc = b ? b[o] : 0.0;
    for (int64_t i = 0; i < in; ++i) acc += static_cast<double>(x[i]) * W[o * in + i];
    y[o] = acc;
  }
  return y;
}

struct RefOut {
  Tensor y;     // (N, nq, E)
  Tensor attn;  // (N, nq, S') head-averaged
};

// q_in (N, T, E), k_in (N, S, kdim), v_in (N, S, vdim); queries = the query rows to evaluate.
RefOut reference_mha(const StateDict& sd, int64_t E, int64_t H, const Tensor& q_in, const Tensor& k_in,
                     const Tensor& v_in, const std::vector<int64_t>& queries, const Mask& kpm = {},
                     const Mask& am = {}, bool zero_attn = false) {
  const int64_t N = q_in.dim(0), S = k_in.dim(1), kd = k_in.dim(2), vd = v_in.dim(2), D = E / H;
  const bool packed = sd.contains("in_proj_weight");
  const float* Wq = packed ? sd.get("in_proj_weight").data() : sd.get("q_proj_weight").data();
  const float* Wk = packed ? Wq + E * E : sd.get("k_proj_weight").data();
  const float* Wv = packed ? Wq + 2 * E * E : sd.get("v_proj_weight").data();
  const float* bq = sd.contains("in_proj_bias") ? sd.get("in_proj_bias").data() : nullptr;
  const float* bk = bq ? bq + E : nullptr;
  const float* bv = bq ? bq + 2 * E : nullptr;
  const float* Wo = sd.get("out_proj.weight").data();
  const float* bo = sd.contains("out_proj.bias") ? sd.get("out_proj.bias").data() : nullptr;
  const bool bias_kv = sd.contains("bias_k");
  const int64_t S2 = S + bias_kv + zero_attn, nq = static_cast<int64_t>(queries.size());
  RefOut r{Tensor{Shape{N, nq, E}}, Tensor{Shape{N, nq, S2}}};
  for (int64_t n = 0; n < N; ++n) {
    std::vector<std::vector<double>> K, V;
    for (int64_t j = 0; j < S; ++j) {
      K.push_back(lin(&k_in.at(n, j, 0), kd, Wk, bk, E));
      V.push_back(lin(&v_in.at(n, j, 0), vd, Wv, bv, E));
    }
    if (bias_kv) {
      K.emplace_back(sd.get("bias_k").begin(), sd.get("bias_k").end());
      V.emplace_back(sd.get("bias_v").begin(), sd.get("bias_v").end());
    }
    if (zero_attn) {
      K.emplace_back(E, 0.0);
      V.emplace_back(E, 0.0);
    }
    for (int64_t qi = 0; qi < nq; ++qi) {
      const int64_t i = queries[qi];
      const auto q = lin(&q_in.at(n, i, 0), E, Wq, bq, E);
      std::vector<float> ctx(E);
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> s(S2);
        double mx = -INFINITY;
        for (int64_t j = 0; j < S2; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q[h * D + d] * K[j][h * D + d];
          const bool masked = j < S && ((!kpm.empty() && kpm.at(n, j)) || (!am.empty() && am.at(i, j)));
          s[j] = masked ? -INFINITY : dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& x : s) sum += x = std::exp(x - mx);
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < S2; ++j) acc += s[j] / sum * V[j][h * D + d];
          ctx[h * D + d] = static_cast<float>(acc);
        }
        for (int64_t j = 0; j < S2; ++j) r.attn.at(n, qi, j) += static_cast<float>(s[j] / sum / H);
      }
      const auto y = lin(ctx.data(), E, Wo, bo, E);
      for (int64_t e = 0; e < E; ++e) r.y.at(n, qi, e) = static_cast<float>(y[e]);
    }
  }
  return r;
}

// The offline stream definition from the simple reference: SingleOutput (B, T-L+1, E) with the
// query at window position pos; Retroactive (B, T-L+1, L, E).
Tensor reference_stream(const StateDict& sd, int64_t E, int64_t H, int64_t L, const Tensor& x, bool retro,
                        int64_t pos = -1) {
  const int64_t B = x.dim(0), T_out = x.dim(1) - L + 1;
  Tensor out = retro ? Tensor{Shape{B, T_out, L, E}} : Tensor{Shape{B, T_out, E}};
  std::vector<int64_t> qs;
  if (retro)
    for (int64_t i = 0; i < L; ++i) qs.push_back(i);
  else
    qs.push_back(pos < 0 ? pos + L : pos);
  for (int64_t t = 0; t < T_out; ++t) {
    const Tensor w = slice_time(x, t, L);
    const Tensor y = reference_mha(sd, E, H, w, w, w, qs).y;  // (B, nq, E)
    for (int64_t b = 0; b < B; ++b)
      std::copy(&y.at(b, 0, 0), &y.at(b, 0, 0) + y.dim(1) * E, out.data() + (b * T_out + t) * y.dim(1) * E);
  }
  return out;
}

// Largest |a - b| / (1 + |b|).
double max_scaled_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double m = 0;
  for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i) {
    const double d = std::fabs(static_cast<double>(a.data()[i]) - b.data()[i]) / (1.0 + std::fabs(b.data()[i]));
    m = std::isnan(d) ? INFINITY : std::max(m, d);
  }
  return m;
}

// ---------------------------------------------------------------------------------------------

TEST(ContinualForward, MatchesReferenceOnRandomShapes) {
  std::mt19937 gen(7);
  for (int trial = 0; trial < 12; ++trial) {
    const int64_t H = std::vector<int64_t>{1, 3, 5, 2}[trial % 4], D = 1 + gen() % 4, E = H * D;
    const int64_t N = 1 + gen() % 3, T = 1 + gen() % 7, L = 1 + gen() % 6;
    const bool bias = trial % 3 != 0, retro = trial % 2 == 0;
    const StateDict sd = make_weights(E, bias, 100 + trial);
    ContinualMhaOptions o = opts(E, H, L);
    o.bias = bias;
    o.batch_first = true;
    o.single_output_forward = trial % 4 != 1;
    o.query_index = -static_cast<int64_t>(1 + gen() % std::min(T, L));
    const Tensor x = random_tensor(Shape{N, T, E}, 200 + trial);
    Mask kpm{Shape{N, T}};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 1; j < T; ++j) kpm.at(n, j) = gen() % 4 == 0;  // key 0 always kept
    std::unique_ptr<ContinualMultiheadAttention> layer;
    if (retro)
      layer = std::make_unique<RetroactiveMultiheadAttention>(o, sd);
    else
      layer = std::make_unique<SingleOutputMultiheadAttention>(o, sd);
    std::vector<int64_t> qs;
    if (!retro && o.single_output_forward)
      qs.push_back(o.query_index + T);
    else
      for (int64_t i = 0; i < T; ++i) qs.push_back(i);
    Tensor attn;
    const Tensor y = layer->forward(x, Tensor{}, Tensor{}, kpm, Mask{}, &attn);
    const RefOut r = reference_mha(sd, E, H, x, x, x, qs, kpm);
    EXPECT_LT(max_abs_diff(y, r.y), 1e-5) << "trial " << trial;
    EXPECT_LT(max_abs_diff(attn, r.attn), 1e-6) << "trial " << trial;
    // Unified API (Layer::forward): every query, (N, T, E), whatever single_output_forward says.
    std::vector<int64_t> all(T);
    for (int64_t i = 0; i < T; ++i) all[i] = i;
    const Tensor y_all = layer->forward(x, kpm);
    ASSERT_EQ(y_all.shape(), (Shape{N, T, E}));
    EXPECT_LT(max_abs_diff(y_all, reference_mha(sd, E, H, x, x, x, all, kpm).y), 1e-5);
  }
}

TEST(ContinualForward, AttnMaskBiasKvZeroAttnKdimVdim) {
  const int64_t E = 15, H = 5, N = 2, T = 4, S = 6;
  ContinualMhaOptions o = opts(E, H, 4);
  o.batch_first = true;
  o.single_output_forward = false;
  o.add_bias_kv = true;
  o.add_zero_attn = true;
  o.kdim = 7;
  o.vdim = 9;
  const StateDict sd = make_weights(E, true, 11, 1.f, 7, 9, true);
  const SingleOutputMultiheadAttention layer(o, sd);
  const Tensor q = random_tensor(Shape{N, T, E}, 1), k = random_tensor(Shape{N, S, 7}, 2),
               v = random_tensor(Shape{N, S, 9}, 3);
  Mask am{Shape{T, S}}, kpm{Shape{N, S}};
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < S; ++j) am.at(i, j) = (i + j) % 3 == 0;
  kpm.at(1, 5) = kpm.at(0, 2) = 1;
  Tensor attn;
  const Tensor y = layer.forward(q, k, v, kpm, am, &attn);
  const RefOut r = reference_mha(sd, E, H, q, k, v, {0, 1, 2, 3}, kpm, am, true);
  EXPECT_EQ(attn.shape(), (Shape{N, T, S + 2}));
  EXPECT_LT(max_abs_diff(y, r.y), 1e-5);
  EXPECT_LT(max_abs_diff(attn, r.attn), 1e-6);
  // These configurations cannot stream.
  EXPECT_THROW(layer.open_stream(1), Error);
  try {
    ContinualMhaOptions o2 = o;
    o2.kdim = o2.vdim = 0;
    SingleOutputMultiheadAttention l2(o2, make_weights(E, true, 11, 1.f, 0, 0, true));
    l2.open_stream(1);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_bias_kv=true cannot stream"), std::string::npos) << e.what();
  }
}

TEST(ContinualForward, LayoutsAreTransposes) {
  const int64_t E = 12, H = 3, N = 2, T = 5;
  const StateDict sd = make_weights(E, true, 5);
  const Tensor x = random_tensor(Shape{N, T, E}, 6);
  ContinualMhaOptions o = opts(E, H, T);
  o.query_index = -2;
  o.batch_first = true;
  const Tensor ref = SingleOutputMultiheadAttention(o, sd).forward(x, Tensor{}, Tensor{}, Mask{}, Mask{}, nullptr);
  o.batch_first = false;  // (T, N, E)
  const Tensor sf = SingleOutputMultiheadAttention(o, sd).forward(permute(x, {1, 0, 2}), Tensor{}, Tensor{}, Mask{},
                                                                 Mask{}, nullptr);
  EXPECT_EQ(sf.shape(), (Shape{1, N, E}));
  EXPECT_TRUE(bit_equal(permute(sf, {1, 0, 2}), ref));
  o.batch_first = true;
  o.embed_dim_second = true;  // (N, E, T)
  const Tensor eds = SingleOutputMultiheadAttention(o, sd).forward(permute(x, {0, 2, 1}), Tensor{}, Tensor{}, Mask{},
                                                                  Mask{}, nullptr);
  EXPECT_EQ(eds.shape(), (Shape{N, E, 1}));
  EXPECT_TRUE(bit_equal(permute(eds, {0, 2, 1}), ref));
}

// ---- streams ----

struct StreamCase {
  bool retro;
  int64_t E, H, L, qi;
};
void PrintTo(const StreamCase& c, std::ostream* os) {
  *os << (c.retro ? "retroactive" : "single-output") << " E=" << c.E << " H=" << c.H << " L=" << c.L
      << " query_index=" << c.qi;
}

class ContinualStream : public ::testing::TestWithParam<StreamCase> {
 protected:
  std::unique_ptr<ContinualMultiheadAttention> make(const StateDict& sd) const {
    const auto& p = GetParam();
    ContinualMhaOptions o = opts(p.E, p.H, p.L);
    o.query_index = p.qi;
    if (p.retro) return std::make_unique<RetroactiveMultiheadAttention>(o, sd);
    return std::make_unique<SingleOutputMultiheadAttention>(o, sd);
  }
};

TEST_P(ContinualStream, ReferenceAndEveryChunkingAgree) {
  const auto& p = GetParam();
  const StateDict sd = make_weights(p.E, true, 31);
  const auto layer = make(sd);
  const int64_t B = 2, T = 3 * p.L + 5;
  const Tensor x = random_tensor(Shape{B, T, p.E}, 32);
  const Tensor ref = layer->stream_reference(x, {});
  const Tensor simple = reference_stream(sd, p.E, p.H, p.L, x, p.retro, p.qi);
  // Retroactive: the whole windows (B, n, L, E) against the simple reference; the stream's own
  // outputs are their newest positions.
  const auto* retro = dynamic_cast<const RetroactiveMultiheadAttention*>(layer.get());
  const Tensor windows = retro ? retro->window_reference(x) : ref;
  ASSERT_EQ(windows.shape(), simple.shape());
  EXPECT_LT(max_abs_diff(windows, simple), 1e-5);
  if (retro) {
    ASSERT_EQ(ref.shape(), (Shape{B, windows.dim(1), p.E}));
    for (int64_t i = 0; i < B * windows.dim(1); ++i)
      for (int64_t e = 0; e < p.E; ++e)
        ASSERT_EQ(ref.data()[i * p.E + e], windows.data()[(i * p.L + p.L - 1) * p.E + e]);
  }
  for (const auto& chunks : std::vector<std::vector<int64_t>>{{1}, {3}, {p.L}, {2, 1, 5, p.L + 1}}) {
    const auto s = layer->open_stream(B);
    const auto w = retro ? layer->open_stream(B) : nullptr;
    const Tensor y = run_stream(*s, x, chunks);
    ASSERT_EQ(y.shape(), ref.shape()) << "chunk " << chunks[0];
    EXPECT_LT(max_abs_diff(y, ref), 2e-6) << "chunk " << chunks[0];
    if (!retro) continue;
    const Tensor yw = run_stream(*w, x, chunks, RetroactiveMultiheadAttention::window_outputs);
    ASSERT_EQ(yw.shape(), windows.shape()) << "chunk " << chunks[0];
    EXPECT_LT(max_abs_diff(yw, windows), 2e-6) << "chunk " << chunks[0];
  }
}

TEST_P(ContinualStream, UpstreamStepApi) {
  const auto& p = GetParam();
  const StateDict sd = make_weights(p.E, true, 41);
  const auto layer = make(sd);
  const int64_t B = 2, T = 2 * p.L + 3;
  const Tensor x = random_tensor(Shape{B, T, p.E}, 42);  // (N, T, E): SingleOutput's default layout
  // What forward_step returns per token: SingleOutput's stream outputs, Retroactive's whole windows.
  const auto* retro = dynamic_cast<const RetroactiveMultiheadAttention*>(layer.get());
  const Tensor ref = retro ? retro->window_reference(x) : layer->stream_reference(x, {});
  const bool bf = !p.retro;  // Retroactive defaults to seq-first
  ContinualSteps steps(*layer);
  // Warm-up: no output for the first L-1 tokens, then forward_steps and forward_step agree with ref.
  const int64_t pre = p.L - 1;
  if (pre > 0) {
    EXPECT_TRUE(steps.forward_steps(bf ? slice_time(x, 0, pre) : permute(slice_time(x, 0, pre), {1, 0, 2})).empty());
  }
  for (int64_t t = pre; t < T; ++t) {
    const Tensor xt = permute(slice_time(x, t, 1), {0, 2, 1}).reshape(Shape{B, p.E});
    const Tensor peek = steps.forward_step(xt, {}, {}, /*update_state=*/false);
    const Tensor y = steps.forward_step(xt);
    ASSERT_FALSE(y.empty());
    EXPECT_TRUE(bit_equal(peek, y));
    const int64_t i = t - pre;
    Tensor want = p.retro ? Tensor{Shape{B, p.L, p.E}} : Tensor{Shape{B, p.E}};
    const int64_t n = want.numel() / B;
    for (int64_t b = 0; b < B; ++b)
      std::copy(ref.data() + (b * ref.dim(1) + i) * n, ref.data() + (b * ref.dim(1) + i + 1) * n, want.data() + b * n);
    if (p.retro) want = permute(want, {1, 0, 2});  // (L, N, E)
    EXPECT_LT(max_abs_diff(y, want), 2e-6) << "t " << t;
  }
  // A different batch size needs clean_state(); then the warm-up starts again.
  EXPECT_THROW(steps.forward_step(random_tensor(Shape{3, p.E}, 1)), Error);
  steps.clean_state();
  for (int64_t t = 0; t + 1 < p.L; ++t) EXPECT_TRUE(steps.forward_step(random_tensor(Shape{3, p.E}, t)).empty());
  EXPECT_FALSE(steps.forward_step(random_tensor(Shape{3, p.E}, 99)).empty());
  // The layer holds no step state: two ContinualSteps fed the same tokens in turns agree (a state
  // shared through the layer would see every token twice).
  ContinualSteps first(*layer), second(*layer);
  Tensor y1, y2;
  for (int64_t t = 0; t < p.L + 1; ++t) {
    const Tensor xt = random_tensor(Shape{3, p.E}, 200 + t);
    y1 = first.forward_step(xt);
    y2 = second.forward_step(xt);
  }
  ASSERT_FALSE(y1.empty());
  EXPECT_TRUE(bit_equal(y1, y2));
}

TEST_P(ContinualStream, SaveRestoreContinuesBitForBit) {
  const auto& p = GetParam();
  const StateDict sd = make_weights(p.E, true, 51);
  const auto layer = make(sd);
  const int64_t B = 2;
  const Tensor x = random_tensor(Shape{B, 3 * p.L + 4, p.E}, 52);
  const auto a = layer->open_stream(B);
  run_stream(*a, slice_time(x, 0, p.L + 2), {3});
  const std::string path = test::temp_path("continual.safetensors");
  a->save(path);
  const auto b = layer->open_stream(B);
  run_stream(*b, random_tensor(Shape{B, 5, p.E}, 53), {2});  // different history, overwritten
  b->restore(path);
  std::filesystem::remove(path);
  const Tensor rest = slice_time(x, p.L + 2, x.dim(1) - p.L - 2);
  EXPECT_TRUE(bit_equal(run_stream(*a, rest, {1, 4}), run_stream(*b, rest, {1, 4})));
  // A state of another configuration is rejected.
  const auto c = layer->open_stream(B + 1);
  SafetensorsWriter w;
  a->save(w);
  w.write(path);
  EXPECT_THROW(c->restore(path), Error);
  std::filesystem::remove(path);
}

TEST_P(ContinualStream, ResetRowLeavesOtherRowsAlone) {
  const auto& p = GetParam();
  const StateDict sd = make_weights(p.E, true, 61);
  const auto layer = make(sd);
  const int64_t B = 3, T1 = p.L + 2, T2 = 2 * p.L + 1;
  const Tensor x = random_tensor(Shape{B, T1 + T2, p.E}, 62);
  const auto a = layer->open_stream(B), b = layer->open_stream(B);
  run_stream(*a, slice_time(x, 0, T1), {2});
  run_stream(*b, slice_time(x, 0, T1), {2});
  b->reset_row(1);
  const Tensor rest = slice_time(x, T1, T2);
  const Tensor ya = run_stream(*a, rest, {1}), yb = run_stream(*b, rest, {1});
  ASSERT_EQ(ya.shape(), yb.shape());
  const int64_t per_row = ya.numel() / B, per_out = per_row / ya.dim(1);
  for (int64_t r : {0, 2})
    EXPECT_TRUE(std::equal(ya.data() + r * per_row, ya.data() + (r + 1) * per_row, yb.data() + r * per_row));
  // Row 1 restarted: zeros until it has L tokens, then the window outputs of its new sequence.
  const Tensor fresh = layer->stream_reference(slice_time(rest, 0, T2), {});  // (B, T2-L+1, ...)
  for (int64_t o = 0; o < ya.dim(1); ++o) {
    const float* got = yb.data() + per_row + o * per_out;
    if (o < p.L - 1) {
      EXPECT_TRUE(std::all_of(got, got + per_out, [](float v) { return v == 0.f; })) << "o " << o;
    } else {
      const float* want = fresh.data() + (fresh.dim(1) + o - (p.L - 1)) * per_out;
      for (int64_t e = 0; e < per_out; ++e) EXPECT_NEAR(got[e], want[e], 2e-6);
    }
  }
  EXPECT_THROW(b->reset_row(3), Error);
}

TEST_P(ContinualStream, OutputBufferIsReusedForEqualChunks) {
  const auto& p = GetParam();
  const auto layer = make(make_weights(p.E, true, 71));
  const auto s = layer->open_stream(2);
  const Tensor x = random_tensor(Shape{2, p.L + 6, p.E}, 72);
  s->push(slice_time(x, 0, p.L));
  const float* first = s->push(slice_time(x, p.L, 3)).data();
  EXPECT_EQ(s->push(slice_time(x, p.L + 3, 3)).data(), first);
}

INSTANTIATE_TEST_SUITE_P(Continual, ContinualStream,
                         ::testing::Values(StreamCase{false, 12, 3, 5, -1}, StreamCase{false, 10, 5, 4, 1},
                                           StreamCase{false, 9, 3, 6, -4}, StreamCase{false, 6, 1, 1, 0},
                                           StreamCase{true, 12, 3, 5, -1}, StreamCase{true, 15, 5, 4, -1},
                                           StreamCase{true, 6, 1, 1, -1}, StreamCase{true, 8, 2, 7, -1}),
                         [](const ::testing::TestParamInfo<StreamCase>& i) {
                           const auto& p = i.param;
                           return std::string(p.retro ? "Retro" : "SingleOut") + "_E" + std::to_string(p.E) + "_H" +
                                  std::to_string(p.H) + "_L" + std::to_string(p.L) + "_qi" +
                                  (p.qi < 0 ? "m" + std::to_string(-p.qi) : std::to_string(p.qi));
                         });

// ---- long streams with large logits ----

// Max |q·k| / sqrt(D) over the stream (upstream's exp() overflows beyond ~88).
double max_logit(const StateDict& sd, int64_t E, int64_t H, const Tensor& x) {
  const int64_t D = E / H, T = x.dim(1);
  const Tensor w = sd.get("in_proj_weight"), b = sd.get("in_proj_bias");
  double mx = 0;
  std::vector<std::vector<double>> q(T), k(T);
  for (int64_t t = 0; t < T; ++t) {
    q[t] = lin(&x.at(0, t, 0), E, w.data(), b.data(), E);
    k[t] = lin(&x.at(0, t, 0), E, w.data() + E * E, b.data() + E, E);
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = std::max<int64_t>(0, t - 8); j < t; ++j)
      for (int64_t h = 0; h < H; ++h) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += q[t][h * D + d] * k[j][h * D + d];
        mx = std::max(mx, std::fabs(s) / std::sqrt(static_cast<double>(D)));
      }
  return mx;
}

// Streams T tokens through the layer and compares with exact (double) attention of every window;
// the stream must be as accurate as tokenmix's own float32 offline window forward.
void check_long_stream(const ContinualMultiheadAttention& layer, const StateDict& sd, bool retro, int64_t T,
                       float scale) {
  const int64_t E = layer.d_model(), H = layer.heads(), L = layer.sequence_len();
  const Tensor x = random_tensor(Shape{1, T, E}, 82);
  const double logit = max_logit(sd, E, H, x);
  if (scale == 8.f) {
    EXPECT_GT(logit, 88.0) << "upstream's exp() would overflow here";
  }
  const auto s = layer.open_stream(1);
  const auto* retro_layer = dynamic_cast<const RetroactiveMultiheadAttention*>(&layer);
  // Retroactive: every updated window (B, n, L, E), not just the newest positions push returns.
  const Tensor y = retro ? run_stream(*s, x, {1}, RetroactiveMultiheadAttention::window_outputs) : run_stream(*s, x, {1});
  const Tensor exact = reference_stream(sd, E, H, L, x, retro, layer.options().query_index);
  // float32 window forward
  const Tensor offline = retro_layer ? retro_layer->window_reference(x) : layer.stream_reference(x, {});
  const double err_stream = max_scaled_diff(y, exact), err_offline = max_scaled_diff(offline, exact);
  // Float32 rounding of a score s moves its softmax weight by ~|s|·2^-24 relative, so any float32
  // evaluation (stream or offline, whatever the summation order or CPU) is off by a small multiple of
  // max|s|·2^-24. The bound allows 64 such units (observed: up to 10); drift over the stream (running sums that are not
  // renormalised) or an overflowing exp() would exceed it by orders of magnitude.
  const double bound = std::max(2e-5, 64 * logit * std::ldexp(1.0, -24));
  EXPECT_LT(err_offline, bound) << "scale " << scale << " max logit " << logit;
  EXPECT_LT(err_stream, bound) << "scale " << scale << " max logit " << logit;
  std::printf("[ long stream ] %s x%g: max logit %.1f, bound %.3g; stream %.3g, offline %.3g (relative to exact)\n",
              retro ? "retro" : "single", scale, logit, bound, err_stream, err_offline);
  ::testing::Test::RecordProperty(std::string(retro ? "retro" : "single") + "_x" + std::to_string(static_cast<int>(scale)),
                 std::to_string(err_stream) + " (offline " + std::to_string(err_offline) + ")");
}

TEST(ContinualLongStream, RetroactiveStaysExactWithLargeLogits) {
  for (const float scale : {1.f, 4.f, 8.f}) {
    const StateDict sd = make_weights(16, true, 81, scale);
    check_long_stream(RetroactiveMultiheadAttention(opts(16, 2, 7), sd), sd, true, 1200, scale);
  }
}

TEST(ContinualLongStream, SingleOutputStaysExactWithLargeLogits) {
  for (const float scale : {4.f, 8.f}) {
    const StateDict sd = make_weights(16, true, 91, scale);
    ContinualMhaOptions o = opts(16, 2, 7);
    o.query_index = 2;
    check_long_stream(SingleOutputMultiheadAttention(o, sd), sd, false, 1000, scale);
  }
}

// ---- errors ----

TEST(ContinualErrors, ConstructorAndCalls) {
  const StateDict sd = make_weights(8, true, 1);
  ContinualMhaOptions o = opts(8, 3, 4);
  expect_error([&] { SingleOutputMultiheadAttention(o, sd); },
               "SingleOutputMultiheadAttention: embed_dim (8) must be divisible by num_heads (3)");
  o = opts(8, 2, 4);
  o.query_index = 4;
  expect_error([&] { SingleOutputMultiheadAttention(o, sd); }, "query_index: expected -4 <= query_index < 4");
  o = opts(8, 2, 0);
  expect_error([&] { RetroactiveMultiheadAttention(o, sd); }, "sequence_len: expected 1 <= sequence_len <= 1048576, got 0");
  o = opts(8, 2, 4);
  o.embed_dim_second = true;
  expect_error([&] { RetroactiveMultiheadAttention(o, sd); }, "embed_dim_second: requires batch_first=true");
  o = opts(8, 2, 4);
  o.bias = false;
  expect_error([&] { RetroactiveMultiheadAttention(o, sd); }, "unexpected keys");
  StateDict missing = make_weights(8, false, 1);
  expect_error([&] { RetroactiveMultiheadAttention(opts(8, 2, 4), missing); }, "missing keys");

  SingleOutputMultiheadAttention so(opts(8, 2, 4), sd);
  expect_error([&] { so.forward(random_tensor(Shape{2, 5, 6}, 1)); },
               "SingleOutputMultiheadAttention::forward: x: expected shape (B, T, 8), got (2, 5, 6)");
  ContinualMhaOptions o2 = opts(8, 2, 4);
  o2.query_index = -4;
  SingleOutputMultiheadAttention so2(o2, sd);
  const Tensor x3 = random_tensor(Shape{1, 3, 8}, 1);
  expect_error([&] { so2.forward(x3, Tensor{}, Tensor{}, Mask{}, Mask{}, nullptr); }, "query_index -4 is out of range");
  EXPECT_EQ(so2.forward(x3).shape(), (Shape{1, 3, 8}));  // Layer::forward: every query, no query_index
  expect_error([&] { ContinualSteps(so).forward_step(random_tensor(Shape{2, 7}, 1)); },
               "SingleOutputMultiheadAttention::forward_step: query: expected shape (N, 8), got (2, 7)");
  expect_error([&] { so.open_stream(0); }, "batch: expected 1 <= batch <= 1048576, got 0");
  StreamOptions bad;
  bad.left_context = 3;
  expect_error([&] { so.open_stream(1, bad); }, "options.left_context: expected 0");
  bad = {};
  bad.window = 5;
  expect_error([&] { so.stream_reference(random_tensor(Shape{1, 6, 8}, 1), bad); }, "options.window");
  const auto s = so.open_stream(2);
  expect_error([&] { s->push(random_tensor(Shape{1, 3, 8}, 1)); },
               "SingleOutputMultiheadAttentionStream::push: chunk: expected shape (2, C, 8), got (1, 3, 8)");
  RetroactiveMultiheadAttention re(opts(8, 2, 4), sd);
  expect_error([&] { RetroactiveMultiheadAttention::window_outputs(*so.open_stream(1)); },
               "RetroactiveMultiheadAttention::window_outputs: stream: expected a stream opened from a "
               "RetroactiveMultiheadAttention");
  ContinualSteps re_steps(re);
  re_steps.forward_step(random_tensor(Shape{2, 8}, 1));
  expect_error([&] { re_steps.forward_step(random_tensor(Shape{1, 8}, 1)); }, "call clean_state() first");
}

}  // namespace
}  // namespace tokenmix
