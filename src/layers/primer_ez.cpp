#include "tokenmix/layers/primer_ez.h"

#include "weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tokenmix/kernels/linear.h"
#include "tokenmix/layers/masks.h"

namespace tokenmix {

namespace {

// Distinct channels of a layout's parameters (0 when d_k / heads are invalid; checked later).
int64_t conv_period(QkvConv layout, int64_t heads, int64_t d_k) {
  switch (layout) {
    case QkvConv::kShared: return 1;
    case QkvConv::kPerHead: return heads * d_k;
    default: return d_k;
  }
}

const char* kAttn = "LabmlMultiHeadAttention";

}  // namespace

const char* qkv_conv_name(QkvConv layout) {
  switch (layout) {
    case QkvConv::kNone: return "none";
    case QkvConv::kPerChannel: return "per_channel";
    case QkvConv::kShared: return "shared";
    case QkvConv::kPerHead: return "per_head";
    case QkvConv::kEfficient: return "efficient";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// CausalDepthwiseConv

CausalDepthwiseConv::CausalDepthwiseConv(WeightReader& r, const std::string& prefix, QkvConv layout,
                                         int64_t heads, int64_t d_k, int64_t kernel_size, int64_t width,
                                         const char* fn)
    : layout_(layout), K_(kernel_size), W_(width) {
  check(layout != QkvConv::kNone, fn, ": conv layout: expected per_channel, shared, per_head or efficient, got none");
  const bool eff = layout == QkvConv::kEfficient;
  const int64_t min_k = eff ? 1 : 2;
  check(kernel_size >= min_k, fn, ": kernel_size: expected >= ", min_k,
        eff ? "" : " (upstream's Conv1d crop removes every output for kernel_size 1)", ", got ", kernel_size);
  check(kernel_size <= limits::kMaxFeatures, fn, ": kernel_size: expected <= ", limits::kMaxFeatures, ", got ",
        kernel_size);
  if (layout != QkvConv::kShared) check_range(d_k, 1, limits::kMaxFeatures, fn, "d_k");
  if (layout == QkvConv::kPerHead) check_range(heads, 1, limits::kMaxFeatures, fn, "heads");
  const int64_t P = conv_period(layout, heads, d_k);
  check(width >= 1 && width % P == 0, fn, ": width: expected a positive multiple of ", P, ", got ", width);
  taps_.assign(static_cast<size_t>(mul_checked(K_, W_, fn, "kernel taps")), 0.f);
  bias_.assign(static_cast<size_t>(W_), 0.f);
  if (eff) {
    const Tensor k = r.take(prefix + "kernels", Shape{K_, P});
    if (!k.empty())
      for (int64_t i = 0; i < K_; ++i)
        for (int64_t f = 0; f < W_; ++f) taps_[i * W_ + f] = k.at(i, f % P);
  } else {
    // Conv1d is a cross-correlation over [x[t-K+1], ..., x[t]]: weight[..., K-1] is the current step.
    const Tensor w = r.take(prefix + "conv.weight", Shape{P, 1, K_});
    const Tensor b = r.take(prefix + "conv.bias", Shape{P});
    if (!w.empty())
      for (int64_t i = 0; i < K_; ++i)
        for (int64_t f = 0; f < W_; ++f) taps_[i * W_ + f] = w.at(f % P, 0, K_ - 1 - i);
    if (!b.empty())
      for (int64_t f = 0; f < W_; ++f) bias_[f] = b.at(f % P);
  }
}

void CausalDepthwiseConv::apply(float* x, int64_t T, int64_t B, int64_t time_stride, int64_t batch_stride,
                                int64_t channels, const float* history, int64_t history_batch_stride) const {
  const int64_t H1 = K_ - 1;
  for (int64_t b = 0; b < B; ++b) {
    // Descending t: step t reads raw steps t-1 .. t-K+1, which are not yet overwritten.
    for (int64_t t = T - 1; t >= 0; --t) {
      float* y = x + b * batch_stride + t * time_stride;
      for (int64_t f0 = 0; f0 < channels; f0 += W_) {
        float* yf = y + f0;
        for (int64_t f = 0; f < W_; ++f) yf[f] = bias_[f] + taps_[f] * yf[f];
        for (int64_t i = 1; i <= H1; ++i) {
          const float* src = nullptr;
          if (t - i >= 0)
            src = x + b * batch_stride + (t - i) * time_stride + f0;
          else if (history)
            src = history + b * history_batch_stride + (H1 + t - i) * channels + f0;
          if (!src) continue;
          const float* tap = taps_.data() + i * W_;
          for (int64_t f = 0; f < W_; ++f) yf[f] += tap[f] * src[f];
        }
      }
    }
  }
}

void CausalDepthwiseConv::stream(float* x, int64_t C, float* history, float* scratch) const {
  const int64_t H1 = K_ - 1;
  // The new history: the last K-1 raw steps of [history, x], taken before x is overwritten.
  for (int64_t r = 0; r < H1; ++r) {
    const int64_t idx = C + r - H1;
    const float* src = idx >= 0 ? x + idx * W_ : history + (idx + H1) * W_;
    std::memcpy(scratch + r * W_, src, sizeof(float) * W_);
  }
  apply(x, C, 1, W_, 0, W_, history, 0);
  std::memcpy(history, scratch, sizeof(float) * H1 * W_);
}

// ---------------------------------------------------------------------------------------------
// SpatialDepthWiseConvolution, squared_relu

SpatialDepthWiseConvolution::SpatialDepthWiseConvolution(QkvConv layout, int64_t heads, int64_t d_k,
                                                         int64_t kernel_size, const StateDict& state_dict)
    : heads_(heads), d_k_(d_k) {
  const char* fn = "SpatialDepthWiseConvolution";
  WeightReader r(state_dict, fn);
  conv_ = std::make_unique<CausalDepthwiseConv>(r, "", layout, heads, d_k, kernel_size,
                                                std::max<int64_t>(conv_period(layout, heads, d_k), 1), fn);
  r.finish();
}

Tensor SpatialDepthWiseConvolution::forward(const Tensor& x) const {
  const char* fn = "SpatialDepthWiseConvolution::forward";
  switch (conv_->layout()) {
    case QkvConv::kShared: check_ndim(x, 4, fn, "x"); break;
    case QkvConv::kPerHead: check_shape(x, {-1, -1, heads_, d_k_}, fn, "x", {"S", "B"}); break;
    default: check_shape(x, {-1, -1, -1, d_k_}, fn, "x", {"S", "B", "H"}); break;
  }
  Tensor y = x.clone();
  const int64_t S = x.dim(0), B = x.dim(1), ch = x.dim(2) * x.dim(3);
  if (y.numel() > 0) conv_->apply(y.data(), S, B, B * ch, ch, ch);
  return y;
}

Tensor squared_relu(const Tensor& x) {
  Tensor y = x.clone();
  for (auto& v : y) {
    const float r = v > 0.f ? v : 0.f;
    v = r * r;
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// LabmlMultiHeadAttention

void LabmlMhaOptions::validate() const {
  const char* fn = kAttn;
  check(heads >= 1, fn, ": heads: expected >= 1, got ", heads);
  check_range(d_model, 1, limits::kMaxFeatures, fn, "d_model");
  check(d_model % heads == 0, fn, ": d_model (", d_model, ") must be divisible by heads (", heads,
        ") (upstream's output projection would receive heads * d_k < d_model features)");
  check(dropout_prob >= 0.0 && dropout_prob <= 1.0, fn, ": dropout_prob: expected 0 <= p <= 1, got ", dropout_prob);
  check(bias || conv == QkvConv::kNone, fn,
        ": bias: expected true for the Primer-EZ classes (they always use biased projections), got false "
        "with conv = ",
        qkv_conv_name(conv));
}

LabmlMultiHeadAttention::LabmlMultiHeadAttention(const LabmlMhaOptions& o, const StateDict& state_dict)
    : conv_(o.conv), heads_(o.heads), d_model_(o.d_model), d_k_(o.heads > 0 ? o.d_model / o.heads : 0) {
  const char* fn = kAttn;
  o.validate();
  const QkvConv conv = o.conv;
  const int64_t heads = o.heads, d_model = o.d_model;
  const bool bias = o.bias;
  WeightReader r(state_dict, fn);
  const std::string sub = conv == QkvConv::kNone ? ".linear." : ".0.linear.";
  qkv_[0] = take_linear(r, "query" + sub, d_model, d_model, o.linear, bias);
  qkv_[1] = take_linear(r, "key" + sub, d_model, d_model, o.linear, bias);
  qkv_[2] = take_linear(r, "value" + sub, d_model, d_model, o.linear);
  out_ = take_linear(r, "output.", d_model, d_model, o.linear);
  if (conv != QkvConv::kNone) {
    const char* names[3] = {"query", "key", "value"};
    for (int i = 0; i < 3; ++i)
      convs_[i] = std::make_unique<CausalDepthwiseConv>(r, std::string(names[i]) + ".1.", conv, heads, d_k_, 3,
                                                        d_model, fn);
  }
  r.finish();
}

void LabmlMultiHeadAttention::project_rows(int which, const Tensor& x, const SeqLayout& l, float* y) const {
  const int64_t D = d_model_, rows = l.B * l.T;
  qkv_[which].apply(x.data(), rows, D, y, D);
  if (convs_[which]) convs_[which]->apply(y, l.T, l.B, l.ts * D, l.bs * D, D);
}

Tensor LabmlMultiHeadAttention::attend(const float* q, const SeqLayout& ql, const float* k, const float* v,
                                       const SeqLayout& kl, const AttentionMask* mask, bool causal,
                                       int64_t left_context, float* probs, Workspace& ws) const {
  const int64_t D = d_model_, rows = ql.B * ql.T;
  AttentionShape s = AttentionShape::scaled(ql.B, heads_, d_k_, ql.T, kl.T);
  if (causal) s = s.with_causal_band(0, left_context);
  s.bf16_products = reduced_precision();
  float* ctx = ws.floats(3, rows * D);  // attention() writes every row
  attention(s, HeadsView{q, ql.bs * D, ql.ts * D}, HeadsView{k, kl.bs * D, kl.ts * D},
            HeadsView{v, kl.bs * D, kl.ts * D}, mask, HeadsOut{ctx, ql.bs * D, ql.ts * D}, probs);
  Tensor out = Tensor::uninitialized(Shape{rows, D});
  out_.apply(ctx, rows, D, out.data(), D);
  return out;
}

Tensor LabmlMultiHeadAttention::forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                        const Mask& mask, Tensor* attn) const {
  const char* fn = "LabmlMultiHeadAttention::forward";
  const int64_t D = d_model_;
  check_shape(query, {-1, -1, D}, fn, "query", {"S", "B"});
  const int64_t S = query.dim(0), B = query.dim(1);
  check(S >= 1 && B >= 1, fn, ": query: expected at least 1 step and 1 batch row, got shape ", query.shape());
  check_shape(key, {-1, B, D}, fn, "key", {"S_k"});
  const int64_t Sk = key.dim(0);
  check(Sk >= 1, fn, ": key: expected at least 1 step, got shape ", key.shape());
  check_shape(value, {Sk, B, D}, fn, "value");
  AttentionMask m;
  if (!mask.empty()) {
    check(mask.ndim() == 3 && (mask.dim(0) == S || mask.dim(0) == 1) && mask.dim(1) == Sk &&
              (mask.dim(2) == B || mask.dim(2) == 1),
          fn, ": mask: expected shape (", S, " or 1, ", Sk, ", ", B, " or 1) with True = may attend, got ",
          mask.shape());
    const int64_t mb = mask.dim(2);
    m = AttentionMask{mask.data(), mb == 1 ? 0 : 1, mask.dim(0) == 1 ? 0 : Sk * mb, mb, 1};
  }
  const SeqLayout ql{B, S, 1, B}, kl{B, Sk, 1, B};
  const WorkspacePool::Lease ws = pool_.acquire();  // slots 0-2 q, k, v, 3 the context
  float *q = ws->floats(0, S * B * D), *k = ws->floats(1, Sk * B * D), *v = ws->floats(2, Sk * B * D);
  project_rows(0, query, ql, q);
  project_rows(1, key, kl, k);
  project_rows(2, value, kl, v);
  std::vector<float> probs(attn ? static_cast<size_t>(B * heads_ * S * Sk) : 0);
  Tensor out = attend(q, ql, k, v, kl, mask.empty() ? nullptr : &m, false, 0, attn ? probs.data() : nullptr, *ws);
  if (attn) {  // (B, H, S, S_k) -> labml's [S, S_k, B, H]
    *attn = Tensor{Shape{S, Sk, B, heads_}};
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < heads_; ++h)
        for (int64_t i = 0; i < S; ++i)
          for (int64_t j = 0; j < Sk; ++j) attn->at(i, j, b, h) = probs[((b * heads_ + h) * S + i) * Sk + j];
  }
  return out.reshape(Shape{S, B, D});
}

Tensor LabmlMultiHeadAttention::project(Projection which, const Tensor& x) const {
  const char* fn = "LabmlMultiHeadAttention::project";
  check_shape(x, {-1, -1, d_model_}, fn, "x", {"S", "B"});
  const int64_t S = x.dim(0), B = x.dim(1);
  check(S >= 1 && B >= 1, fn, ": x: expected at least 1 step and 1 batch row, got shape ", x.shape());
  Tensor y = Tensor::uninitialized(Shape{S, B, heads_, d_k_});
  project_rows(static_cast<int>(which), x, SeqLayout{B, S, 1, B}, y.data());
  return y;
}

Tensor LabmlMultiHeadAttention::self_attention(const Tensor& x, const AttentionMask* mask, bool causal,
                                               int64_t left_context, const char* fn) const {
  const int64_t B = x.dim(0), T = x.dim(1);
  check(B >= 1 && T >= 1, fn, ": x: expected at least 1 batch row and 1 step, got shape ", x.shape());
  const SeqLayout l{B, T, T, 1};
  const int64_t n = B * T * d_model_;
  const WorkspacePool::Lease ws = pool_.acquire();  // slots 0-2 q, k, v, 3 the context
  float *q = ws->floats(0, n), *k = ws->floats(1, n), *v = ws->floats(2, n);
  for (int i = 0; i < 3; ++i) project_rows(i, x, l, i == 0 ? q : i == 1 ? k : v);
  return attend(q, l, k, v, l, mask, causal, left_context, nullptr, *ws).reshape(Shape{B, T, d_model_});
}

Tensor LabmlMultiHeadAttention::forward(const Tensor& x, const Mask& key_padding_mask) const {
  const char* fn = "LabmlMultiHeadAttention::forward";
  check_shape(x, {-1, -1, d_model_}, fn, "x", {"B", "T"});
  if (key_padding_mask.empty()) return self_attention(x, nullptr, false, 0, fn);
  const AttentionMask m = padding_attention_mask(key_padding_mask, x.dim(0), x.dim(1), fn);
  return self_attention(x, &m, false, 0, fn);
}

Tensor LabmlMultiHeadAttention::stream_reference(const Tensor& x, const StreamOptions& options) const {
  const char* fn = "LabmlMultiHeadAttention::stream_reference";
  check_shape(x, {-1, -1, d_model_}, fn, "x", {"B", "T"});
  check(options.left_context >= 0, fn, ": left_context: expected >= 0 (0 = unlimited), got ",
        options.left_context);
  return self_attention(x, nullptr, true, options.left_context, fn);
}

void LabmlMultiHeadAttention::project_qkv(const float* x, int64_t rows, float* q, float* k, float* v) const {
  const int64_t D = d_model_;
  qkv_[0].apply(x, rows, D, q, D);
  qkv_[1].apply(x, rows, D, k, D);
  qkv_[2].apply(x, rows, D, v, D);
}

int64_t LabmlMultiHeadAttention::weight_bytes() const {
  int64_t bytes = out_.weight_bytes();
  for (int i = 0; i < 3; ++i) bytes += qkv_[i].weight_bytes() + (convs_[i] ? convs_[i]->weight_bytes() : 0);
  return bytes;
}

void LabmlMultiHeadAttention::project_out(const float* ctx, int64_t rows, float* out) const {
  out_.apply(ctx, rows, d_model_, out, d_model_);
}

namespace {

// The KV-cache stream plus, for the Primer classes, the causal conv history of the projected
// q, k and v: (3, B, K-1, D), the last K-1 raw projections of each row, oldest first.
class LabmlAttentionStream final : public CausalAttentionStream {
  using P = LabmlMultiHeadAttention::Projection;

 public:
  LabmlAttentionStream(const LabmlMultiHeadAttention& layer, const CausalAttentionCore& core, int64_t batch,
                       const StreamOptions& options)
      : CausalAttentionStream(kAttn, core, batch, options), layer_(layer),
        hist_rows_(layer.conv() == QkvConv::kNone ? 0 : layer.qkv_conv(P::kQuery)->kernel_size() - 1),
        history_(static_cast<size_t>(3 * batch_ * hist_rows_ * width_), 0.f),
        scratch_(static_cast<size_t>(hist_rows_ * width_)) {}

 protected:
  void transform_qkv(int64_t b, float* q, float* k, float* v, int64_t C) override {
    if (hist_rows_ == 0) return;
    float* x[3] = {q, k, v};
    for (int i = 0; i < 3; ++i) layer_.qkv_conv(static_cast<P>(i))->stream(x[i], C, history(i, b), scratch_.data());
  }
  void reset_extra(int64_t b) override {
    for (int i = 0; i < 3; ++i) std::fill(history(i, b), history(i, b) + hist_rows_ * width_, 0.f);
  }
  void save_extra(SafetensorsWriter& w) const override {
    w.set_metadata("qkv_conv", qkv_conv_name(layer_.conv()));
    if (hist_rows_ > 0)
      w.add("conv_history", Tensor::view(Shape{3, batch_, hist_rows_, width_}, const_cast<float*>(history_.data())));
  }
  void restore_extra(const SafetensorsFile& f) override {
    const char* fn = "LabmlMultiHeadAttention::restore";
    const auto it = f.metadata().find("qkv_conv");
    check(it != f.metadata().end() && it->second == qkv_conv_name(layer_.conv()), fn, ": ", f.path(),
          ": 'qkv_conv': expected ", qkv_conv_name(layer_.conv()), ", got ",
          it == f.metadata().end() ? std::string("(absent)") : it->second);
    if (hist_rows_ == 0) return;
    const Tensor t = f.tensor("conv_history");
    check_shape(t, {3, batch_, hist_rows_, width_}, fn, "conv_history");
    std::copy(t.begin(), t.end(), history_.begin());
  }

 private:
  const LabmlMultiHeadAttention& layer_;
  const int64_t hist_rows_;
  std::vector<float> history_, scratch_;
  float* history(int i, int64_t b) { return history_.data() + ((i * batch_ + b) * hist_rows_) * width_; }
};

}  // namespace

std::unique_ptr<Stream> LabmlMultiHeadAttention::open_stream(int64_t batch, const StreamOptions& options) const {
  const CausalAttentionCore& core = *this;
  return std::make_unique<LabmlAttentionStream>(*this, core, batch, options);
}

}  // namespace tokenmix
