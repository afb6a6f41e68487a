#include "tokenmix/streaming/causal_attention_stream.h"

#include <cmath>

#include "tokenmix/kernels/attention.h"

namespace tokenmix {

namespace {
// options.left_context, once batch and it are checked (runs before the KV cache is sized).
int64_t checked_left_context(const std::string& name, int64_t batch, const StreamOptions& options) {
  const std::string fn = name + "::open_stream";
  check_range(batch, 1, limits::kMaxBatch, fn.c_str(), "batch");
  check_range(options.left_context, 0, limits::kMaxTokens, fn.c_str(), "options.left_context (0 = unlimited)");
  return options.left_context;
}
}  // namespace

CausalAttentionStream::CausalAttentionStream(std::string name, const CausalAttentionCore& core,
                                             int64_t batch, const StreamOptions& options)
    : name_(std::move(name)), push_fn_(name_ + "::push"), batch_(batch), width_(core.attention_width()), core_(core),
      heads_(core.attention_heads()), left_context_(checked_left_context(name_, batch, options)),
      cache_(batch, core.attention_heads(), core.attention_width() / core.attention_heads(), left_context_) {}

Tensor CausalAttentionStream::push_chunk(const Tensor& chunk) {
  const char* fn = push_fn_.c_str();
  check_shape(chunk, {batch_, -1, width_}, fn, "chunk", {"B", "C", "E"});
  const int64_t C = chunk.dim(1), E = width_, n = chunk.numel();
  check(C >= 1, fn, ": chunk: expected at least 1 token, got shape ", chunk.shape());
  if (static_cast<int64_t>(ctx_.size()) < n) {
    qkv_.resize(3 * n);
    for (auto* buf : {&ctx_, &out_}) buf->resize(n);
  }
  float* const q_all = qkv_.data();  // q, k, v: consecutive (B·C, E) blocks (project_qkv's layout)
  if (C > reserved_chunk_) {  // with a left-context limit no chunk of this size allocates again
    if (left_context_ > 0) attention_reserve(C, left_context_ - 1 + C, width_ / heads_);
    reserved_chunk_ = C;
  }
  core_.project_qkv(chunk.data(), batch_ * C, q_all, q_all + n, q_all + 2 * n);
  const int64_t D = E / heads_;
  for (int64_t b = 0; b < batch_; ++b) {
    float *q = q_all + b * C * E, *k = q + n, *v = q + 2 * n;
    transform_qkv(b, q, k, v, C);
    cache_.append(b, k, v, C, E);
    const int64_t held = cache_.length(b);
    AttentionShape s = AttentionShape::scaled(1, heads_, D, C, held).with_causal_band(held - C, left_context_);
    s.bf16_products = core_.bf16_products();
    attention(s, HeadsView{q, 0, E}, cache_.keys(b), cache_.values(b),
              nullptr, HeadsOut{ctx_.data() + b * C * E, 0, E});
  }
  core_.project_out(ctx_.data(), batch_ * C, out_.data());
  return Tensor::view(Shape{batch_, C, E}, out_.data());
}

void CausalAttentionStream::reset() {
  for (int64_t b = 0; b < batch_; ++b) reset_row(b);
}

void CausalAttentionStream::reset_row(int64_t b) {
  check(b >= 0 && b < batch_, name_, "::reset_row: b: expected 0 <= b < ", batch_, ", got ", b);
  cache_.reset_row(b);
  reset_extra(b);
}

void CausalAttentionStream::save_state(SafetensorsWriter& w) const {
  cache_.save(w, "kv.");
  save_extra(w);
}

void CausalAttentionStream::restore_state(const SafetensorsFile& f) {
  KvCache cache = cache_.restored(f, "kv.");  // throws before anything changes
  restore_extra(f);                            // all or nothing
  cache_ = std::move(cache);
}

}  // namespace tokenmix
