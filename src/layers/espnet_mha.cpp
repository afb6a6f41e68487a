#include "tokenmix/layers/espnet_mha.h"

#include "weights.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tokenmix/kernels/attention.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/layers/masks.h"

namespace tokenmix {

void EspnetMhaOptions::validate() const {
  const char* fn = "EspnetMultiHeadedAttention";
  check_range(n_feat, 1, limits::kMaxFeatures, fn, "n_feat");
  check(n_head >= 1, fn, ": n_head: expected >= 1, got ", n_head);
  check(n_feat % n_head == 0, fn, ": n_feat (", n_feat, ") must be divisible by n_head (", n_head, ")");
  check(dropout >= 0.0 && dropout <= 1.0, fn, ": dropout: expected 0 <= p <= 1, got ", dropout);
}

EspnetMultiHeadedAttention::EspnetMultiHeadedAttention(const EspnetMhaOptions& options, const StateDict& state_dict)
    : n_feat_(options.n_feat), n_head_(options.n_head),
      head_dim_(options.n_head > 0 ? options.n_feat / options.n_head : 0) {
  const char* fn = "EspnetMultiHeadedAttention";
  options.validate();
  const int64_t n_feat = n_feat_;
  WeightReader r(state_dict, fn);
  q_ = take_linear(r, "linear_q.", n_feat, n_feat, options.linear);
  k_ = take_linear(r, "linear_k.", n_feat, n_feat, options.linear);
  v_ = take_linear(r, "linear_v.", n_feat, n_feat, options.linear);
  out_ = take_linear(r, "linear_out.", n_feat, n_feat, options.linear);
  r.finish();
}

AttentionMask EspnetMultiHeadedAttention::keep_view(const Mask& mask, int64_t B, int64_t T1, int64_t T2,
                                                    const char* fn) {
  check(mask.ndim() == 3, fn, ": mask: expected (B, 1, T2) or (B, T1, T2) with True = keep, got shape ", mask.shape(),
        " (2-D masks are rejected: upstream mis-broadcasts them)");
  check((mask.dim(0) == B || mask.dim(0) == 1) && (mask.dim(1) == T1 || mask.dim(1) == 1) && mask.dim(2) == T2, fn,
        ": mask: expected shape (", B, " or 1, ", T1, " or 1, ", T2, "), got ", mask.shape());
  return AttentionMask{mask.data(), mask.dim(0) == 1 ? 0 : mask.dim(1) * T2, mask.dim(1) == 1 ? 0 : T2, 1, 1};
}

Tensor EspnetMultiHeadedAttention::attend(HeadsView q, HeadsView k, HeadsView v, int64_t B, int64_t T1,
                                          int64_t T2, const AttentionMask* mask, Tensor* attn, Workspace& ws) const {
  const int64_t E = n_feat_;
  AttentionShape s = AttentionShape::scaled(B, n_head_, head_dim_, T1, T2);
  s.bf16_products = reduced_precision();
  float* ctx = ws.floats(3, B * T1 * E);  // attention() writes every row
  if (attn) *attn = Tensor{Shape{B, n_head_, T1, T2}};
  attention(s, q, k, v, mask, HeadsOut{ctx, T1 * E, E}, attn ? attn->data() : nullptr);
  Tensor y = Tensor::uninitialized(Shape{B, T1, E});
  out_.apply(ctx, B * T1, E, y.data(), E);
  return y;
}

namespace {
// Upstream's head split flattens the axes between batch and features into time, so a 2-D (B, E)
// query or memory is one token: (B, 1, E) (SPEC espnet_mha section 4, "Shape leniency").
Tensor as_sequence(const Tensor& t) {
  return t.ndim() == 2 ? t.reshape(Shape{t.dim(0), 1, t.dim(1)}) : t;
}
}  // namespace

Tensor EspnetMultiHeadedAttention::forward(const Tensor& query_in, const Tensor& memory_in, const Mask& mask,
                                           Tensor* attn) const {
  const char* fn = "EspnetMultiHeadedAttention::forward";
  const Tensor query = as_sequence(query_in), memory = as_sequence(memory_in);
  if (query.ndim() != 3 || query.dim(2) != n_feat_)
    fail(fn, ": query: expected shape (B, T1, ", n_feat_, ") or (B, ", n_feat_, "), got ", query_in.shape());
  const int64_t B = query.dim(0), T = query.dim(1);
  if (!memory.empty() && (memory.ndim() != 3 || memory.dim(0) != B || memory.dim(2) != n_feat_))
    fail(fn, ": memory: expected shape (", B, ", T2, ", n_feat_, ") or (", B, ", ", n_feat_, "), got ",
         memory_in.shape());
  const int64_t T2 = memory.empty() ? T : memory.dim(1);
  AttentionMask m;
  if (!mask.empty()) m = keep_view(mask, B, T, T2, fn);
  return project_attend(query, memory, mask.empty() ? nullptr : &m, attn);
}

Tensor EspnetMultiHeadedAttention::project_attend(const Tensor& query, const Tensor& memory,
                                                  const AttentionMask* mask, Tensor* attn) const {
  const int64_t B = query.dim(0), T = query.dim(1), E = n_feat_;
  const WorkspacePool::Lease ws = pool_.acquire();  // slots 0-2 the projections, 3 the context
  const Tensor& kv_in = memory.empty() ? query : memory;  // self-attention: keys and values from the query
  const int64_t T2 = kv_in.dim(1);
  float* q = ws->floats(0, B * T * E);
  float* k = ws->floats(1, B * T2 * E);
  float* v = ws->floats(2, B * T2 * E);
  q_.apply(query.data(), B * T, E, q, E);
  k_.apply(kv_in.data(), B * T2, E, k, E);
  v_.apply(kv_in.data(), B * T2, E, v, E);
  return attend(HeadsView{q, T * E, E}, HeadsView{k, T2 * E, E}, HeadsView{v, T2 * E, E}, B, T, T2, mask, attn, *ws);
}

Tensor EspnetMultiHeadedAttention::forward(const Tensor& x, const Mask& key_padding_mask) const {
  const char* fn = "EspnetMultiHeadedAttention::forward";
  check_shape(x, {-1, -1, n_feat_}, fn, "x", {"B", "T"});
  if (key_padding_mask.empty()) return project_attend(x, Tensor{}, nullptr, nullptr);
  const AttentionMask m = padding_attention_mask(key_padding_mask, x.dim(0), x.dim(1), fn);
  return project_attend(x, Tensor{}, &m, nullptr);
}

Tensor EspnetMultiHeadedAttention::step(const Tensor& query, const Tensor& memory, const Mask& mask,
                                        Tensor* attn) const {
  const char* fn = "EspnetMultiHeadedAttention::step";
  check(query.ndim() == 2 || query.ndim() == 3, fn, ": query: expected (B, E) or (B, T1, E), got shape ",
        query.shape());
  const bool squeeze = query.ndim() == 2 || query.dim(1) == 1;
  Tensor y = forward(as_sequence(query), memory, mask, attn);
  return squeeze ? y.reshape(Shape{y.dim(0), y.dim(2)}) : y;
}

EspnetMultiHeadedAttention::ProjectedMemory EspnetMultiHeadedAttention::project_memory(
    const Tensor& memory, const Mask& mask) const {
  const char* fn = "EspnetMultiHeadedAttention::project_memory";
  check_shape(memory, {-1, -1, n_feat_}, fn, "memory", {"B", "T2"});
  if (!mask.empty())
    check(mask.ndim() == 3 && (mask.dim(0) == memory.dim(0) || mask.dim(0) == 1) &&
              mask.dim(2) == memory.dim(1),
          fn, ": mask: expected (B, 1, T2) or (B, T1, T2) with B = ", memory.dim(0), ", T2 = ", memory.dim(1),
          ", got ", mask.shape());
  return {k_(memory, fn), v_(memory, fn), mask};
}

Tensor EspnetMultiHeadedAttention::step(const Tensor& query, const ProjectedMemory& memory,
                                        Tensor* attn) const {
  const char* fn = "EspnetMultiHeadedAttention::step";
  check(query.ndim() == 2 || query.ndim() == 3, fn, ": query: expected (B, E) or (B, T1, E), got shape ",
        query.shape());
  const bool squeeze = query.ndim() == 2 || query.dim(1) == 1;
  const Tensor q3 = as_sequence(query);
  check_shape(q3, {memory.key.dim(0), -1, n_feat_}, fn, "query", {"B", "T1"});
  const int64_t B = q3.dim(0), T1 = q3.dim(1), T2 = memory.key.dim(1), E = n_feat_;
  const WorkspacePool::Lease ws = pool_.acquire();
  float* q = ws->floats(0, B * T1 * E);
  q_.apply(q3.data(), B * T1, E, q, E);
  AttentionMask m;
  if (!memory.mask.empty()) m = keep_view(memory.mask, B, T1, T2, fn);
  Tensor y = attend(HeadsView{q, T1 * E, E}, HeadsView{memory.key.data(), T2 * E, E},
                    HeadsView{memory.value.data(), T2 * E, E}, B, T1, T2, memory.mask.empty() ? nullptr : &m, attn,
                    *ws);
  return squeeze ? y.reshape(Shape{y.dim(0), y.dim(2)}) : y;
}

Tensor EspnetMultiHeadedAttention::stream_reference(const Tensor& x, const StreamOptions& options) const {
  const char* fn = "EspnetMultiHeadedAttention::stream_reference";
  check_shape(x, {-1, -1, n_feat_}, fn, "x", {"B", "T"});
  return forward(x, Tensor{}, causal_keep_mask(x.dim(1), options.left_context, fn), nullptr);
}

std::unique_ptr<Stream> EspnetMultiHeadedAttention::open_stream(int64_t batch,
                                                                const StreamOptions& options) const {
  const CausalAttentionCore& core = *this;
  return std::make_unique<CausalAttentionStream>("EspnetMultiHeadedAttention", core, batch, options);
}

void EspnetMultiHeadedAttention::project_qkv(const float* x, int64_t rows, float* q, float* k,
                                             float* v) const {
  const int64_t E = n_feat_;
  q_.apply(x, rows, E, q, E);
  k_.apply(x, rows, E, k, E);
  v_.apply(x, rows, E, v, E);
}

void EspnetMultiHeadedAttention::project_out(const float* ctx, int64_t rows, float* out) const {
  out_.apply(ctx, rows, n_feat_, out, n_feat_);
}

}  // namespace tokenmix
