// tests/attention_kernel_test.cpp: the optimized attention() (flash blocks, per-row vector decode,
// probs path) against attention_reference() over random shapes, layouts, masks and causal bands;
// the single-query kernels (attention_scores, attention_context_unnormalized) against plain loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention_tiles.h"
#include "test_util.h"
#include "tokenmix/core/cpu.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/kernels/precision.h"
#include "tokenmix/layers/espnet_mha.h"

namespace tokenmix {
namespace {

struct Problem {
  AttentionShape s;
  bool time_major = false;  // q/k/v/ctx stored (T, B, E) instead of (B, T, E)
  int mask_kind = 0;        // 0 none, 1 key padding (B, 1, Tk), 2 per row (B, Tq, Tk), 3 broadcast batch
  uint8_t keep_value = 1;
  bool with_probs = false;
};

std::vector<float> random_vec(size_t n, std::mt19937& g, float sd = 1.f) {
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Whether attention() runs this shape's products in bf16 (the contract of AttentionShape::bf16_products).
bool bf16_runs(const Problem& p) {
  return p.s.bf16_products && kernel_isa() >= KernelIsa::kAvx512Bf16 && p.s.head_dim % 16 == 0 && !p.with_probs &&
         p.s.q_len >= 4;
}

// Runs both kernels on one problem and checks ctx (and probs) agree; masked probabilities and
// fully masked rows must be exactly 0 in both. With bf16 products the reference gets Q, K and V
// rounded to bf16 as the kernel does, and the context may differ by the probabilities' rounding
// (2^-9 of each weight: at most 2^-9 max |v|). *moved (optional) receives the largest difference from
// the fp32 reference on the unrounded inputs (how far bf16 products moved the result).
void check_problem(const Problem& p, uint32_t seed, double* moved = nullptr) {
  std::mt19937 g(seed);
  const AttentionShape& s = p.s;
  const int64_t E = s.heads * s.head_dim, B = s.batch, Tq = s.q_len, Tk = s.k_len;
  // Inputs large enough that scores span a wide range (exercises the online rescaling).
  const auto q = random_vec(B * Tq * E, g, 1.5f), k = random_vec(B * Tk * E, g, 1.5f), v = random_vec(B * Tk * E, g);
  auto view = [&](const std::vector<float>& x, int64_t T) {
    return p.time_major ? HeadsView{x.data(), E, B * E} : HeadsView{x.data(), T * E, E};
  };
  std::vector<uint8_t> mask_data;
  AttentionMask m;
  const AttentionMask* mp = nullptr;
  if (p.mask_kind) {
    std::bernoulli_distribution keep(0.7);
    const int64_t rows = p.mask_kind == 1 ? 1 : Tq, batches = p.mask_kind == 3 ? 1 : B;
    mask_data.resize(batches * rows * Tk);
    for (auto& x : mask_data) x = keep(g) ? p.keep_value : static_cast<uint8_t>(1 - p.keep_value);
    // Some fully masked rows / batches.
    if (rows > 1 && Tq > 2)
      for (int64_t j = 0; j < Tk; ++j) mask_data[1 * Tk + j] = static_cast<uint8_t>(1 - p.keep_value);
    if (p.mask_kind == 1 && B > 1)
      for (int64_t j = 0; j < Tk; ++j) mask_data[(B - 1) * Tk + j] = static_cast<uint8_t>(1 - p.keep_value);
    m = AttentionMask{mask_data.data(), p.mask_kind == 3 ? 0 : rows * Tk, rows == 1 ? 0 : Tk, 1, p.keep_value};
    mp = &m;
  }
  std::vector<float> ctx(B * Tq * E, 7.f), ctx_ref(B * Tq * E, -7.f);
  std::vector<float> probs(p.with_probs ? B * s.heads * Tq * Tk : 0, 3.f), probs_ref(B * s.heads * Tq * Tk);
  auto out = [&](std::vector<float>& x) {
    return p.time_major ? HeadsOut{x.data(), E, B * E} : HeadsOut{x.data(), Tq * E, E};
  };
  attention(s, view(q, Tq), view(k, Tk), view(v, Tk), mp, out(ctx), p.with_probs ? probs.data() : nullptr);
  std::vector<float> ctx_fp32(ctx_ref);
  attention_reference(s, view(q, Tq), view(k, Tk), view(v, Tk), mp, out(ctx_fp32), probs_ref.data());
  double tolerance = 2e-5;
  if (bf16_runs(p)) {
    auto rounded = [](std::vector<float> x) {
      for (float& e : x) e = from_bf16(to_bf16(e));
      return x;
    };
    const auto qr = rounded(q), kr = rounded(k), vr = rounded(v);
    attention_reference(s, view(qr, Tq), view(kr, Tk), view(vr, Tk), mp, out(ctx_ref), probs_ref.data());
    float vmax = 0.f;
    for (float e : vr) vmax = std::max(vmax, std::abs(e));
    tolerance = 2.5e-3 * vmax + 1e-5;
  } else {
    ctx_ref = ctx_fp32;
  }
  double worst = 0;
  if (moved) *moved = 0;
  for (size_t i = 0; i < ctx.size(); ++i) {
    ASSERT_TRUE(std::isfinite(ctx[i])) << "ctx[" << i << "]";
    worst = std::max(worst, std::abs(static_cast<double>(ctx[i]) - ctx_ref[i]));
    if (moved) *moved = std::max(*moved, std::abs(static_cast<double>(ctx[i]) - ctx_fp32[i]));
  }
  EXPECT_LT(worst, tolerance) << "bf16=" << bf16_runs(p) << " B=" << B << " H=" << s.heads << " D=" << s.head_dim << " Tq=" << Tq << " Tk=" << Tk
                         << " causal=" << s.causal << " off=" << s.query_offset << " lc=" << s.left_context
                         << " mask=" << p.mask_kind << " probs=" << p.with_probs << " tm=" << p.time_major;
  // Fully masked rows give exactly 0 context.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        double row = 0;
        for (int64_t j = 0; j < Tk; ++j) row += probs_ref[((b * s.heads + h) * Tq + i) * Tk + j];
        if (row != 0) continue;
        const float* c = out(ctx).data + b * out(ctx).batch_stride + i * out(ctx).time_stride + h * s.head_dim;
        for (int64_t d = 0; d < s.head_dim; ++d) ASSERT_EQ(c[d], 0.f) << "fully masked row b=" << b << " i=" << i;
      }
  if (p.with_probs) {
    double pw = 0;
    for (size_t i = 0; i < probs.size(); ++i) {
      if (probs_ref[i] == 0.f) {
        ASSERT_EQ(probs[i], 0.f) << "masked probability " << i;
      }
      pw = std::max(pw, std::abs(static_cast<double>(probs[i]) - probs_ref[i]));
    }
    EXPECT_LT(pw, 2e-6);
  }
}

TEST(AttentionKernel, RandomShapesMasksBands) {
  std::mt19937 g(20240601);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(g); };
  for (int trial = 0; trial < 120; ++trial) {
    Problem p;
    p.s.batch = pick(1, 3);
    p.s.heads = pick(1, 5);
    p.s.head_dim = std::vector<int64_t>{1, 3, 8, 16, 17, 64, 72, 136}[pick(0, 7)];
    // Tiny (1..5), mid (around the 64-row tile and 256-key block edges) and odd lengths.
    const std::vector<int64_t> lens{1, 2, 3, 5, 7, 63, 64, 65, 129, 255, 256, 257, 300};
    p.s.q_len = lens[pick(0, lens.size() - 1)];
    p.s.k_len = pick(0, 2) == 0 ? p.s.q_len : lens[pick(0, lens.size() - 1)];
    p.s.scale = 1.f / std::sqrt(static_cast<float>(p.s.head_dim));
    p.s.causal = pick(0, 2) == 0;
    if (p.s.causal) {
      p.s.query_offset = p.s.k_len >= p.s.q_len ? p.s.k_len - p.s.q_len : 0;
      if (pick(0, 3) == 0) p.s.query_offset = pick(0, p.s.k_len);
      p.s.left_context = pick(0, 1) ? 0 : pick(1, p.s.k_len + 2);
    }
    p.time_major = pick(0, 3) == 0;
    p.mask_kind = static_cast<int>(pick(0, 3));
    p.keep_value = static_cast<uint8_t>(pick(0, 1));
    p.with_probs = pick(0, 3) == 0;
    SCOPED_TRACE("trial " + std::to_string(trial));
    check_problem(p, 1000 + trial);
  }
}

TEST(AttentionKernel, Bf16PackingIsBitExactAgainstItsReference) {
  // The AVX512-BF16 packings of the bf16 tiles against their plain loops: key panels, query rows and
  // value slices for head dims of 1-4 slices and key counts around panels and pairs, on values that
  // exercise the rounding (ties to even, values that round up to the next binade or to infinity,
  // subnormals, signed zeros, infinities, NaNs), read with a row stride wider than D.
  if (!tiles::bf16::available()) GTEST_SKIP() << "kernel set " << kernel_isa_name(kernel_isa());
  std::mt19937 g(7);
  std::normal_distribution<float> normal;
  const float specials[] = {0.f, -0.f, 1.f + std::ldexp(1.f, -8), 1.f + 3 * std::ldexp(1.f, -8),
                            std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::denorm_min(), -1e-40f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN()};
  for (const int64_t D : {16, 32, 48, 64})
    for (const int64_t n : {1, 2, 15, 16, 17, 31, 33, 64}) {
      const int64_t ld = D + 5;
      std::vector<float> x(static_cast<size_t>(n * ld));
      for (size_t i = 0; i < x.size(); ++i) x[i] = i % 7 == 3 ? specials[(i / 7) % 12] : normal(g);
      const int64_t panels = tiles::key_panels_size(n, D), slices = tiles::bf16::value_slices_size(n, D);
      using Pack = void (*)(const float*, int64_t, int64_t, int64_t, uint16_t*);
      const std::pair<Pack, Pack> packs[] = {{tiles::bf16::pack_key_panels, tiles::bf16::pack_key_panels_reference},
                                             {tiles::bf16::pack_rows, tiles::bf16::pack_rows_reference},
                                             {tiles::bf16::pack_value_slices, tiles::bf16::pack_value_slices_reference}};
      const int64_t sizes[] = {panels, n * D, slices};
      for (int k = 0; k < 3; ++k) {
        std::vector<uint16_t> got(static_cast<size_t>(sizes[k]), 0xdead), want(static_cast<size_t>(sizes[k]), 0xdead);
        packs[k].first(x.data(), ld, n, D, got.data());
        packs[k].second(x.data(), ld, n, D, want.data());
        EXPECT_EQ(got, want) << "packing " << k << " D=" << D << " n=" << n;
      }
    }
}

TEST(AttentionKernel, Bf16ProductsMatchReferenceOnRoundedOperands) {
  // bf16 Q·Kᵀ and P·V (AVX512-BF16): head dims of whole and partial 16-feature slices, key counts
  // odd and around panels and blocks, masks, causal bands; where bf16 does not run (CPU, head_dim,
  // probs, decode rows) the fp32 result is required. On a CPU that runs it, bf16 must have moved the
  // result (the path ran) and stayed within the probabilities' rounding of the rounded-input reference.
  std::mt19937 g(20261207);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(g); };
  double moved_most = 0;
  int ran = 0;
  for (int trial = 0; trial < 80; ++trial) {
    Problem p;
    p.s.batch = pick(1, 2);
    p.s.heads = pick(1, 3);
    p.s.head_dim = std::vector<int64_t>{16, 32, 64, 128, 24, 8}[pick(0, 5)];
    const std::vector<int64_t> lens{1, 3, 4, 15, 17, 33, 255, 256, 257, 520};
    p.s.q_len = lens[pick(0, lens.size() - 1)];
    p.s.k_len = pick(0, 1) == 0 ? p.s.q_len : lens[pick(0, lens.size() - 1)];
    p.s.scale = 1.f / std::sqrt(static_cast<float>(p.s.head_dim));
    p.s.causal = pick(0, 2) == 0;
    if (p.s.causal) {
      p.s.query_offset = p.s.k_len >= p.s.q_len ? p.s.k_len - p.s.q_len : 0;
      p.s.left_context = pick(0, 1) ? 0 : pick(1, p.s.k_len + 2);
    }
    p.s.bf16_products = true;
    p.time_major = pick(0, 3) == 0;
    p.mask_kind = static_cast<int>(pick(0, 3));
    p.with_probs = pick(0, 5) == 0;
    SCOPED_TRACE("trial " + std::to_string(trial));
    double moved = 0;
    check_problem(p, 5000 + trial, &moved);
    if (bf16_runs(p)) {
      ++ran;
      moved_most = std::max(moved_most, moved);
    }
  }
  if (kernel_isa() < KernelIsa::kAvx512Bf16) GTEST_SKIP() << "kernel set " << kernel_isa_name(kernel_isa());
  std::printf("[ bf16 ] %d problems in bf16, largest move from fp32 %.3g\n", ran, moved_most);
  EXPECT_GT(ran, 20);
  EXPECT_GT(moved_most, 1e-3) << "bf16 products left every result at fp32: the bf16 path did not run";
}

TEST(AttentionKernel, LongSequencesFlashBlocks) {
  // Long keys: several 256-key blocks with an online softmax whose max grows across blocks.
  for (bool causal : {false, true}) {
    Problem p;
    p.s.batch = 1;
    p.s.heads = 2;
    p.s.head_dim = 32;
    p.s.q_len = 700;
    p.s.k_len = 1100;
    p.s.scale = 0.25f;
    p.s.causal = causal;
    p.s.query_offset = 400;
    p.s.left_context = causal ? 333 : 0;
    check_problem(p, causal ? 7 : 8);
  }
  Problem masked;
  masked.s = AttentionShape{1, 3, 16, 130, 1500, 0.3f, false, 0, 0};
  masked.mask_kind = 1;
  check_problem(masked, 9);
}

TEST(AttentionKernel, QueriesAcrossWorkItemSpans) {
  // More than 2048 queries: several work items per head on the register-tile path (each packs the
  // keys it can see; with a left context a tile's first block starts before its band on a panel
  // boundary). head_dim 24 (register tiles with an 8-wide tail) and 20 (the OpenBLAS variant).
  for (int64_t D : {24, 20}) {
    Problem band;
    band.s = AttentionShape{1, 1, D, 2100, 2300, 0.4f, true, 200, 701};
    check_problem(band, 31);
    Problem masked;
    masked.s = AttentionShape{1, 1, D, 2100, 600, 0.4f, false, 0, 0};
    masked.mask_kind = 2;
    check_problem(masked, 32);
  }
}

TEST(AttentionKernel, DecodeSingleToken) {
  // One query over a KV cache, as the streams call it (vector decode path), with and without a window.
  for (int64_t lc : {0, 1, 17, 300}) {
    Problem p;
    p.s = AttentionShape{1, 8, 64, 1, 257, 0.125f, true, 256, lc};
    check_problem(p, 11 + static_cast<uint32_t>(lc));
  }
  Problem none;  // key range empty: left context 0 rows
  none.s = AttentionShape{2, 2, 8, 1, 0, 1.f, false, 0, 0};
  check_problem(none, 5);
}

TEST(AttentionKernel, SingleQueryKernelsMatchPlainLoops) {
  // attention_scores / attention_context_unnormalized against double loops: D with and without the
  // vector path, rows strided inside a wider buffer, masked (-inf) keys, all keys masked, n = 0.
  std::mt19937 g(21);
  for (int64_t D : {64, 24, 5}) {
    for (int64_t n : {0, 1, 7, 8, 33}) {
      const int64_t ld = 3 * D + 1;
      const std::vector<float> q = random_vec(D, g), K = random_vec(n * ld + D, g), V = random_vec(n * ld + D, g);
      std::vector<float> s(n + 1, 0.f);
      attention_scores(q.data(), K.data() + 1, n, ld, D, 0.5f, s.data());
      std::vector<double> want_s(n);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t d = 0; d < D; ++d) want_s[j] += 0.5 * q[d] * K[1 + j * ld + d];
        EXPECT_NEAR(s[j], want_s[j], 1e-5 * (1 + std::abs(want_s[j]))) << "D=" << D << " n=" << n << " j=" << j;
      }
      for (int masked : {0, 1, 2}) {  // none, every third key, all
        std::vector<float> sm(s.begin(), s.begin() + n);
        for (int64_t j = 0; j < n; ++j)
          if (masked == 2 || (masked == 1 && j % 3 == 1)) sm[j] = -INFINITY;
        std::vector<float> c(D, 7.f);
        float m = 0.f;
        const float d = attention_context_unnormalized(sm.data(), n, V.data() + 2, ld, D, c.data(), &m);
        double want_m = -INFINITY, want_d = 0.0;
        for (int64_t j = 0; j < n; ++j)
          if (!(masked == 2 || (masked == 1 && j % 3 == 1))) want_m = std::max(want_m, want_s[j]);
        std::vector<double> want_c(D, 0.0);
        for (int64_t j = 0; j < n && want_m != -INFINITY; ++j) {
          if (masked == 2 || (masked == 1 && j % 3 == 1)) continue;
          const double w = std::exp(want_s[j] - want_m);
          want_d += w;
          for (int64_t e = 0; e < D; ++e) want_c[e] += w * V[2 + j * ld + e];
        }
        const std::string where = "D=" + std::to_string(D) + " n=" + std::to_string(n) + " masked=" + std::to_string(masked);
        if (want_m == -INFINITY) {
          EXPECT_EQ(m, -INFINITY) << where;
          EXPECT_EQ(d, 0.f) << where;
        } else {
          EXPECT_NEAR(m, want_m, 1e-5 * (1 + std::abs(want_m))) << where;
          EXPECT_NEAR(d, want_d, 1e-5 * want_d) << where;
        }
        for (int64_t e = 0; e < D; ++e) EXPECT_NEAR(c[e], want_c[e], 1e-4 * (1 + want_d)) << where << " e=" << e;
      }
    }
  }
}

TEST(AttentionKernel, EspnetStreamDecodeMatchesOffline) {
  // End to end through the layer: one-token pushes (fused QKV GEMV + vector decode path) and mixed
  // chunks equal the offline causal forward (flash path), with and without a left context.
  const int64_t E = 24, H = 3, T = 40;
  StateDict sd;
  uint32_t seed = 1;
  for (const char* n : {"linear_q.", "linear_k.", "linear_v.", "linear_out."}) {
    test::add_random(sd, std::string(n) + "weight", Shape{E, E}, seed++);
    test::add_random(sd, std::string(n) + "bias", Shape{E}, seed++);
  }
  const EspnetMultiHeadedAttention layer(E, H, sd);
  const Tensor x = test::random_tensor(Shape{2, T, E}, 77);
  for (int64_t lc : {0, 5}) {
    StreamOptions o;
    o.left_context = lc;
    const Tensor want = layer.stream_reference(x, o);
    auto stream = layer.open_stream(2, o);
    int64_t t = 0;
    for (int64_t c : {1, 1, 3, 1, 7, 1, 1}) {
      for (int64_t rep = 0; rep < 3 && t + c <= T; ++rep, t += c) {
        Tensor chunk{Shape{2, c, E}};
        for (int64_t b = 0; b < 2; ++b)
          for (int64_t i = 0; i < c; ++i)
            for (int64_t e = 0; e < E; ++e) chunk.at(b, i, e) = x.at(b, t + i, e);
        const Tensor y = stream->push(chunk);
        for (int64_t b = 0; b < 2; ++b)
          for (int64_t i = 0; i < c; ++i)
            for (int64_t e = 0; e < E; ++e)
              ASSERT_NEAR(y.at(b, i, e), want.at(b, t + i, e), 2e-5) << "lc=" << lc << " t=" << t + i;
      }
    }
    EXPECT_GT(t, 20);
  }
}

}  // namespace
}  // namespace tokenmix
