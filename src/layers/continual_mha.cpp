#include "tokenmix/layers/continual_mha.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "tokenmix/core/checked.h"
#include "tokenmix/core/threads.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/kernels/permute.h"
#include "tokenmix/layers/masks.h"
#include "continual_stream.h"
#include "weights.h"

namespace tokenmix {

// ---------------------------------------------------------------------------------------------
// Layer

void ContinualMhaOptions::validate(const char* cls, bool batch_first_default) const {
  check_range(embed_dim, 1, limits::kMaxFeatures, cls, "embed_dim");
  check(num_heads >= 1, cls, ": num_heads: expected >= 1, got ", num_heads);
  check(embed_dim % num_heads == 0, cls, ": embed_dim (", embed_dim, ") must be divisible by num_heads (", num_heads,
        ")");
  check_range(sequence_len, 1, limits::kMaxTokens, cls, "sequence_len");
  check_range(kdim, 0, limits::kMaxFeatures, cls, "kdim (0 = embed_dim)");
  check_range(vdim, 0, limits::kMaxFeatures, cls, "vdim (0 = embed_dim)");
  check(dropout >= 0.0 && dropout < 1.0, cls, ": dropout: expected 0 <= p < 1, got ", dropout);
  check(!embed_dim_second || batch_first.value_or(batch_first_default), cls,
        ": embed_dim_second: requires batch_first=true (upstream's seq-first + embed_dim_second layouts are "
        "inconsistent)");
}

ContinualMultiheadAttention::ContinualMultiheadAttention(const char* cls, const ContinualMhaOptions& o,
                                                         bool batch_first_default, const StateDict& sd)
    : cls_(cls), opt_(o), batch_first_(o.batch_first.value_or(batch_first_default)), E_(o.embed_dim),
      H_(o.num_heads), D_(o.num_heads > 0 ? o.embed_dim / o.num_heads : 0), L_(o.sequence_len),
      kdim_(o.kdim > 0 ? o.kdim : o.embed_dim), vdim_(o.vdim > 0 ? o.vdim : o.embed_dim) {
  o.validate(cls, batch_first_default);
  scale_ = 1.f / std::sqrt(static_cast<float>(D_));
  WeightReader r(sd, cls);
  const bool packed = kdim_ == E_ && vdim_ == E_;
  StoredWeight w_in, w[3];
  if (packed) {
    w_in = take_weight(r, "in_proj_weight", Shape{3 * E_, E_});
  } else {
    w[0] = take_weight(r, "q_proj_weight", Shape{E_, E_});
    w[1] = take_weight(r, "k_proj_weight", Shape{E_, kdim_});
    w[2] = take_weight(r, "v_proj_weight", Shape{E_, vdim_});
  }
  const Tensor b_in = o.bias ? r.take("in_proj_bias", Shape{3 * E_}) : Tensor{};
  const bool have_bias = !o.bias || !b_in.empty();  // (a missing bias is reported by finish())
  if (packed && !w_in.empty() && have_bias) {
    for (int i = 0; i < 3; ++i)
      qkv_[i] = w_in.narrow(i * E_, E_).linear(o.bias ? b_in.narrow(i * E_, E_) : Tensor{}, o.linear);
  } else if (!packed && !w[0].empty() && !w[1].empty() && !w[2].empty() && have_bias) {
    for (int i = 0; i < 3; ++i) qkv_[i] = w[i].linear(o.bias ? b_in.narrow(i * E_, E_) : Tensor{}, o.linear);
  }
  // The retroactive stream reads out_proj's float32 columns per head (project_value_head).
  out_ = take_linear(r, "out_proj.", E_, E_, o.linear, o.bias, KeepWeights::kAlsoFloat32);
  if (o.add_bias_kv) {
    bias_k_ = r.take("bias_k", Shape{1, 1, E_});
    bias_v_ = r.take("bias_v", Shape{1, 1, E_});
  }
  r.finish();
}

ContinualMultiheadAttention::~ContinualMultiheadAttention() = default;

void ContinualMultiheadAttention::project(int part, const float* x, int64_t rows, float* y) const {
  qkv_[part].apply(x, rows, qkv_[part].in_features(), y, E_);
}

void ContinualMultiheadAttention::project_out(const float* ctx, int64_t rows, float* y) const {
  out_.apply(ctx, rows, E_, y, E_);
}

void ContinualMultiheadAttention::project_value_head(int64_t h, const float* x, int64_t rows, int64_t ldx,
                                                     float* y, int64_t ldy) const {
  // y[r][e] = x[r] · W_o[e, hD:(h+1)D]: the single-query scores kernel with the E rows of the head's
  // W_o slice as keys. BLAS is slower here: sgemm packs the whole (E, D) slice for a few rows, and
  // sgemv over a 64-column slice runs below the register-blocked kernel.
  for (int64_t r = 0; r < rows; ++r) attention_scores(x + r * ldx, out_.weight().data() + h * D_, E_, E_, D_, 1.f, y + r * ldy);
}


Tensor ContinualMultiheadAttention::forward_bf(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                               const Mask& kpm, const Mask& attn_mask, Tensor* attn_weights,
                                               const char* fn, bool all_queries) const {
  const int64_t N = q_in.dim(0), T = q_in.dim(1), S = k_in.dim(1);
  check_shape(k_in, {N, -1, kdim_}, fn, "key", {"N", "S"});
  check_shape(v_in, {N, S, vdim_}, fn, "value", {"N", "S"});
  // Extra key/value rows: bias_k / bias_v, then a zero row (add_zero_attn), as PyTorch appends them.
  const int64_t extra = (opt_.add_bias_kv ? 1 : 0) + (opt_.add_zero_attn ? 1 : 0), S2 = S + extra;
  // Scratch from the layer's pool (grown only): slots 0 q, 1 k, 2 v, 3 context, 4 one head's
  // probabilities (attn_weights only).
  const WorkspacePool::Lease ws = pool_.acquire();
  float *q = ws->floats(0, N * T * E_), *k = ws->floats(1, N * S2 * E_), *v = ws->floats(2, N * S2 * E_);
  qkv_[0].apply(q_in.data(), N * T, E_, q, E_);
  // k, v of batch row n at rows n·S2 .. n·S2 + S - 1; the extra rows after them.
  for (int64_t n = 0; n < N; n += extra ? 1 : N) {
    const int64_t rows = extra ? S : N * S;
    qkv_[1].apply(k_in.data() + n * S * kdim_, rows, kdim_, k + n * S2 * E_, E_);
    qkv_[2].apply(v_in.data() + n * S * vdim_, rows, vdim_, v + n * S2 * E_, E_);
    if (!extra) continue;
    std::fill(k + (n * S2 + S) * E_, k + (n + 1) * S2 * E_, 0.f);  // add_zero_attn's row stays 0
    std::fill(v + (n * S2 + S) * E_, v + (n + 1) * S2 * E_, 0.f);
    if (opt_.add_bias_kv) {
      std::copy(bias_k_.begin(), bias_k_.end(), k + (n * S2 + S) * E_);
      std::copy(bias_v_.begin(), bias_v_.end(), v + (n * S2 + S) * E_);
    }
  }
  int64_t q0 = 0, Tq = T;
  if (single_output_ && opt_.single_output_forward && !all_queries) {
    const int64_t qi = opt_.query_index;
    check(qi >= -T && qi < T, fn, ": query_index ", qi, " is out of range for a query of ", T, " tokens");
    q0 = qi < 0 ? qi + T : qi;
    Tq = 1;
  }
  Mask keep;
  AttentionMask am;
  const bool masked = !kpm.empty() || !attn_mask.empty();
  if (masked && attn_mask.empty() && extra == 0) {
    am = padding_attention_mask(kpm, N, S, fn);  // a view, no (N, Tq, S) keep mask
  } else if (masked) {
    if (!kpm.empty()) check_shape(kpm, {N, S}, fn, "key_padding_mask", {"N", "S"});
    if (!attn_mask.empty())
      check(attn_mask.ndim() == 2 && attn_mask.dim(0) == T && attn_mask.dim(1) == S, fn,
            ": attn_mask: expected a bool (T, S) = (", T, ", ", S, ") mask (per-head (N*H, T, S) masks are not "
            "supported), got shape ", attn_mask.shape());
    keep = Mask{Shape{N, Tq, S2}};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < Tq; ++i)
        for (int64_t j = 0; j < S2; ++j)
          keep.at(n, i, j) = j >= S || ((kpm.empty() || !kpm.at(n, j)) &&
                                        (attn_mask.empty() || !attn_mask.at(q0 + i, j)));
    am = AttentionMask{keep.data(), Tq * S2, S2, 1, 1};
  }
  float* ctx = ws->floats(3, N * Tq * E_);  // attention() writes every row
  const AttentionMask* mask = masked ? &am : nullptr;
  if (!attn_weights) {
    AttentionShape s = AttentionShape::scaled(N, H_, D_, Tq, S2);
    s.bf16_products = reduced_precision();
    attention(s, HeadsView{q + q0 * E_, T * E_, E_}, HeadsView{k, S2 * E_, E_}, HeadsView{v, S2 * E_, E_}, mask,
              HeadsOut{ctx, Tq * E_, E_});
  } else {
    // Upstream's head-averaged weights (N, Tq, S2), summed head by head in head order and divided by
    // H, as torch's mean over heads: one head per attention() call through an (N, Tq, S2)
    // probabilities buffer (slot 4), so the (N, H, Tq, S2) tensor is never formed.
    Tensor avg{Shape{N, Tq, S2}};
    float* probs = ws->floats(4, N * Tq * S2);
    const AttentionShape one = AttentionShape::scaled(N, 1, D_, Tq, S2);
    const int64_t n_probs = N * Tq * S2;
    for (int64_t h = 0; h < H_; ++h) {
      const int64_t c = h * D_;  // the head's columns
      attention(one, HeadsView{q + q0 * E_ + c, T * E_, E_}, HeadsView{k + c, S2 * E_, E_},
                HeadsView{v + c, S2 * E_, E_}, mask, HeadsOut{ctx + c, Tq * E_, E_}, probs);
      float* a = avg.data();
      parallel_for(n_probs, n_probs >= threshold::kFirstTouchElements, [&](int64_t i) { a[i] += probs[i]; });
    }
    const float heads = static_cast<float>(H_);
    float* a = avg.data();
    parallel_for(n_probs, n_probs >= threshold::kFirstTouchElements, [&](int64_t i) { a[i] /= heads; });
    *attn_weights = avg;
  }
  Tensor y = Tensor::uninitialized(Shape{N, Tq, E_});
  out_.apply(ctx, N * Tq, E_, y.data(), E_);
  return y;
}

Tensor ContinualMultiheadAttention::to_batch_first(const Tensor& x, const char* fn, const char* arg,
                                                   int64_t width) const {
  if (opt_.embed_dim_second) {
    check_shape(x, {-1, width, -1}, fn, arg, {"N", "", "T"});
    return permute(x, {0, 2, 1});
  }
  if (!batch_first_) {
    check_shape(x, {-1, -1, width}, fn, arg, {"T", "N"});
    return permute(x, {1, 0, 2});
  }
  check_shape(x, {-1, -1, width}, fn, arg, {"N", "T"});
  return x;
}

Tensor ContinualMultiheadAttention::forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                            const Mask& key_padding_mask, const Mask& attn_mask,
                                            Tensor* attn_weights) const {
  const std::string fn = std::string(cls_) + "::forward";
  const Tensor q = to_batch_first(query, fn.c_str(), "query", E_);
  const Tensor k = key.empty() ? q : to_batch_first(key, fn.c_str(), "key", kdim_);
  const Tensor v = value.empty() ? q : to_batch_first(value, fn.c_str(), "value", vdim_);
  const Tensor y = forward_bf(q, k, v, key_padding_mask, attn_mask, attn_weights, fn.c_str());
  if (opt_.embed_dim_second) return permute(y, {0, 2, 1});
  if (!batch_first_) return permute(y, {1, 0, 2});
  return y;
}

Tensor ContinualMultiheadAttention::forward(const Tensor& x, const Mask& key_padding_mask) const {
  const std::string fn = std::string(cls_) + "::forward";
  check_shape(x, {-1, -1, E_}, fn.c_str(), "x", {"B", "T"});
  return forward_bf(x, x, x, key_padding_mask, Mask{}, nullptr, fn.c_str(), /*all_queries=*/true);
}

void ContinualMultiheadAttention::check_stream_options(const StreamOptions& options, const char* fn) const {
  check(options.left_context == 0, fn, ": options.left_context: expected 0 (the window is sequence_len = ", L_,
        "), got ", options.left_context);
  check(options.window == 0 || options.window == L_, fn, ": options.window: expected 0 or sequence_len = ", L_,
        ", got ", options.window);
  check(!opt_.add_bias_kv, fn, ": add_bias_kv=true cannot stream (upstream's step mode crashes); use forward()");
  check(!opt_.add_zero_attn, fn, ": add_zero_attn=true cannot stream (upstream's step mode asserts); use forward()");
  check(kdim_ == E_ && vdim_ == E_, fn, ": kdim/vdim != embed_dim (", kdim_, ", ", vdim_, " vs ", E_,
        ") cannot stream (upstream's step mode crashes); use forward()");
}

std::unique_ptr<Stream> ContinualMultiheadAttention::open_stream(int64_t batch, const StreamOptions& options) const {
  const std::string fn = std::string(cls_) + "::open_stream";
  check_stream_options(options, fn.c_str());
  check_range(batch, 1, limits::kMaxBatch, fn.c_str(), "batch");
  return make_stream(batch);
}

ContinualMultiheadAttention::Projected ContinualMultiheadAttention::project_all(const Tensor& x,
                                                                                const char* fn) const {
  check_shape(x, {-1, -1, E_}, fn, "x", {"B", "T"});
  return {qkv_[0](x, fn), qkv_[1](x, fn), qkv_[2](x, fn)};
}

// ---------------------------------------------------------------------------------------------
// SingleOutput

SingleOutputMultiheadAttention::SingleOutputMultiheadAttention(const ContinualMhaOptions& options,
                                                               const StateDict& state_dict)
    : ContinualMultiheadAttention("SingleOutputMultiheadAttention", options, true, state_dict) {
  single_output_ = true;
  check(options.query_index >= -L_ && options.query_index < L_, cls_, ": query_index: expected -", L_,
        " <= query_index < ", L_, " (sequence_len), got ", options.query_index);
}

int64_t SingleOutputMultiheadAttention::delay() const {
  const int64_t qi = opt_.query_index;
  return qi >= 0 ? L_ - qi - 1 : -qi - 1;
}

Tensor SingleOutputMultiheadAttention::stream_reference(const Tensor& x, const StreamOptions& options) const {
  const char* fn = "SingleOutputMultiheadAttention::stream_reference";
  check_stream_options(options, fn);
  const Projected p = project_all(x, fn);
  const int64_t B = x.dim(0), T = x.dim(1), T_out = std::max<int64_t>(T - L_ + 1, 0);
  Tensor ctx{Shape{B, T_out, E_}};
  if (T_out == 0) return ctx;
  // Output i (token t = i + L - 1) = query of token t - delay over keys t-L+1 .. t: the causal band
  // with query offset L - 1 and left context L.
  AttentionShape s = AttentionShape::scaled(B, H_, D_, T_out, T).with_causal_band(L_ - 1, L_);
  s.bf16_products = reduced_precision();
  attention(s, HeadsView{p.q.data() + (L_ - 1 - delay()) * E_, T * E_, E_}, HeadsView{p.k.data(), T * E_, E_},
            HeadsView{p.v.data(), T * E_, E_}, nullptr, HeadsOut{ctx.data(), T_out * E_, E_});
  return out_(ctx, fn);
}

std::unique_ptr<detail::ContinualStreamImpl> SingleOutputMultiheadAttention::make_stream(int64_t batch) const {
  return detail::make_single_output_stream(*this, batch);
}

// ---------------------------------------------------------------------------------------------
// Retroactive

RetroactiveMultiheadAttention::RetroactiveMultiheadAttention(const ContinualMhaOptions& options,
                                                             const StateDict& state_dict)
    : ContinualMultiheadAttention("RetroactiveMultiheadAttention", options, false, state_dict) {}

Tensor RetroactiveMultiheadAttention::window_reference(const Tensor& x) const {
  const char* fn = "RetroactiveMultiheadAttention::window_reference";
  const Projected p = project_all(x, fn);
  const int64_t B = x.dim(0), T = x.dim(1), T_out = std::max<int64_t>(T - L_ + 1, 0);
  Tensor ctx{Shape{B, T_out, L_, E_}};
  if (T_out == 0) return ctx;
  AttentionShape s = AttentionShape::scaled(B, H_, D_, L_, L_);
  s.bf16_products = reduced_precision();
  for (int64_t i = 0; i < T_out; ++i)  // window i = tokens i .. i + L - 1, every position a query
    attention(s, HeadsView{p.q.data() + i * E_, T * E_, E_}, HeadsView{p.k.data() + i * E_, T * E_, E_},
              HeadsView{p.v.data() + i * E_, T * E_, E_}, nullptr,
              HeadsOut{ctx.data() + i * L_ * E_, T_out * L_ * E_, E_});
  return out_(ctx, fn);
}

Tensor RetroactiveMultiheadAttention::stream_reference(const Tensor& x, const StreamOptions& options) const {
  check_stream_options(options, "RetroactiveMultiheadAttention::stream_reference");
  const Tensor w = window_reference(x);  // (B, T_out, L, E)
  const int64_t B = w.dim(0), T_out = w.dim(1);
  Tensor newest = Tensor::uninitialized(Shape{B, T_out, E_});
  detail::newest_window_positions(w.data(), B * T_out, L_, E_, newest.data());
  return newest;
}

Tensor RetroactiveMultiheadAttention::window_outputs(const Stream& stream) {
  const auto* w = dynamic_cast<const RetroactiveWindows*>(&stream);
  check(w != nullptr, "RetroactiveMultiheadAttention::window_outputs: stream: expected a stream opened from a "
        "RetroactiveMultiheadAttention");
  return w->window_outputs();
}

std::unique_ptr<detail::ContinualStreamImpl> RetroactiveMultiheadAttention::make_stream(int64_t batch) const {
  return detail::make_retroactive_stream(*this, batch);
}

}  // namespace tokenmix
