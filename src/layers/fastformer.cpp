#include "tokenmix/layers/fastformer.h"

#include "weights.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "tokenmix/core/threads.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/layers/masks.h"

namespace tokenmix {

namespace {

// w[t] (t < T, contiguous) = softmax over the kept t of logits[t * stride]; exactly 0 for padded t
// (keep non-null and keep[t] == 0) and everywhere when no t is kept. This equals ESPnet's
// fill-with-float32-min, softmax, zero-the-padded rule.
void pool_weights(const float* logits, int64_t stride, int64_t T, const uint8_t* keep, float* w) {
  float mx = -std::numeric_limits<float>::infinity();
  bool any = false;
  for (int64_t t = 0; t < T; ++t)
    if (!keep || keep[t]) {
      mx = std::max(mx, logits[t * stride]);
      any = true;
    }
  if (!any) {
    std::fill(w, w + T, 0.f);
    return;
  }
  float sum = 0.f;
  for (int64_t t = 0; t < T; ++t) {
    w[t] = (!keep || keep[t]) ? std::exp(logits[t * stride] - mx) : 0.f;
    sum += w[t];
  }
  for (int64_t t = 0; t < T; ++t) w[t] /= sum;
}

}  // namespace

void FastSelfAttentionOptions::validate() const {
  const char* fn = "FastSelfAttention";
  check_range(size, 1, limits::kMaxFeatures, fn, "size");
  check(attention_heads >= 1, fn, ": attention_heads: expected >= 1, got ", attention_heads);
  check(size % attention_heads == 0, fn, ": size (", size, ") is not an integer multiple of attention_heads (",
        attention_heads, ")");
  check(dropout_rate >= 0.0 && dropout_rate <= 1.0, fn, ": dropout_rate: expected 0 <= p <= 1, got ",
        dropout_rate);
}

FastSelfAttention::FastSelfAttention(const FastSelfAttentionOptions& o, const StateDict& state_dict)
    : size_(o.size), heads_(o.attention_heads), head_dim_(o.attention_heads > 0 ? o.size / o.attention_heads : 0),
      dropout_rate_(o.dropout_rate) {
  const char* fn = "FastSelfAttention";
  o.validate();
  const int64_t size = o.size, attention_heads = o.attention_heads;
  scale_ = std::sqrt(static_cast<float>(head_dim_));
  WeightReader r(state_dict, fn);
  query_ = take_linear(r, "query.", size, size, o.linear);
  query_att_ = take_linear(r, "query_att.", attention_heads, size, o.linear);
  const StoredWeight key_weight = take_weight(r, "key.weight", Shape{size, size});
  const Tensor key_bias = r.take("key.bias", Shape{size});
  if (!key_weight.empty() && !key_bias.empty()) {
    key_ = key_weight.linear(key_bias, o.linear);
    key_transposed_ = key_weight.transposed().linear({}, o.linear);
  }
  key_att_ = take_linear(r, "key_att.", attention_heads, size, o.linear, true, KeepWeights::kAlsoFloat32);
  transform_ = take_linear(r, "transform.", size, size, o.linear);
  r.finish();
}

FastSelfAttention::Scratch FastSelfAttention::scratch(Workspace& ws, int64_t T) const {
  const int64_t E = size_, H = heads_;
  return {ws.floats(0, T * H), ws.floats(1, T * H), ws.floats(2, H * E), ws.floats(3, E)};
}

void FastSelfAttention::project_query(const float* x, int64_t rows, float* out, int64_t ld, int64_t a_offset) const {
  const int64_t E = size_, H = heads_;
  query_.apply(x, rows, E, out, ld);
  query_att_.apply(out, rows, ld, out + a_offset, ld);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < H; ++h) out[r * ld + a_offset + h] /= scale_;
}

void FastSelfAttention::project_rows(const float* x, int64_t rows, float* out) const {
  if (rows == 0) return;
  const int64_t E = size_, W = cache_width();
  project_query(x, rows, out, W, 2 * E);
  key_.apply(x, rows, E, out + E, W);
}

void FastSelfAttention::pooled_query(const float* q, const float* a, int64_t ld, int64_t T, const uint8_t* keep,
                                     int64_t keep_head_stride, float* alpha, float* gq, bool parallel) const {
  const int64_t E = size_, H = heads_, d = head_dim_;
  // α_h = pool(a[:, h]); gq_h = α_h · q[:, h-slice].
  parallel_for(H, parallel, [&](int64_t h) {
    pool_weights(a + h, ld, T, keep ? keep + h * keep_head_stride : nullptr, alpha + h * T);
    gemm(alpha + h * T, T, q + h * d, ld, false, gq + h * d, E, 1, d, T);
  });
}

void FastSelfAttention::pooled_key(const float* rows, int64_t T, const uint8_t* keep, int64_t keep_head_stride,
                                   float* gk, const Scratch& s) const {
  const int64_t E = size_, H = heads_, d = head_dim_, W = cache_width();
  // Heads pool independently: in parallel when this is not already one of several parallel rows
  // (a single sequence, or the stream), from threshold::kPoolTokens tokens; below that the pooling
  // and its BLAS calls (GEMVs, the thin logit GEMM) stay on this thread (core/threads.h).
  const bool parallel = T >= threshold::kPoolTokens;
  float* gq = s.gq;
  pooled_query(rows, rows + 2 * E, W, T, keep, keep_head_stride, s.weights, gq, parallel);
  // Key logits c[t, h] = (k_t ⊙ gq)·W_key_att[h] + b = k_t·(W_key_att[h] ⊙ gq) + b, then / sqrt(d).
  float* scores = s.scores;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t e = 0; e < E; ++e) scores[h * E + e] = key_att_.weight().data()[h * E + e] * gq[e];
  float* c = s.logits;  // (T, H)
  linear_raw(rows + E, T, E, W, scores, key_att_.bias().data(), H, c, H);
  for (int64_t i = 0; i < T * H; ++i) c[i] /= scale_;
  // Key pooling: β_h = pool(c[:, h]); gk_h = Σ_t β_h[t] (k_t ⊙ gq)_h = gq_h ⊙ (β_h · k[:, h-slice]).
  float* beta = s.weights;
  parallel_for(H, parallel, [&](int64_t h) {
    pool_weights(c + h, H, T, keep ? keep + h * keep_head_stride : nullptr, beta + h * T);
    gemm(beta + h * T, T, rows + E + h * d, W, false, gk + h * d, E, 1, d, T);
  });
  for (int64_t e = 0; e < E; ++e) gk[e] *= gq[e];
}

void FastSelfAttention::folded_pooled_keys(const float* x, const float* rows, int64_t B, int64_t T,
                                           const uint8_t* keep, int64_t keep_batch_stride,
                                           int64_t keep_head_stride, float* gk, Workspace& ws) const {
  const int64_t E = size_, H = heads_, d = head_dim_, W = E + H;
  // Sequences pool in parallel; a single sequence pools on this thread (its BLAS calls too): the
  // pooling is O(T·E·H), and OpenBLAS threading these thin products costs more than it saves.
  const ThreadLimit serial(B > 1 ? std::numeric_limits<int>::max() : 1);
  float* gq = ws.floats(3, B * E);
  float* S = ws.floats(4, 2 * B * H * E);  // (B·H, E): S = W_key_att ⊙ gq, then x̄
  float* M = S + B * H * E;                // (B·H, E): S·W_key, then key(x̄) = W_key·x̄ + b_key
  float* c0 = ws.floats(5, B * H);         // S[h]·b_key + b_key_att[h]
  const float* w_att = key_att_.weight().data();
  const float* b_key = key_.bias().data();
  // Pooled query and S per sequence.
  parallel_for_workspaces(B, B > 1, worker_pool_, [&](int64_t b, Workspace& mine) {
    const uint8_t* kb = keep ? keep + b * keep_batch_stride : nullptr;
    pooled_query(rows + b * T * W, rows + b * T * W + E, W, T, kb, keep_head_stride, mine.floats(0, H * T),
                 gq + b * E, /*parallel=*/false);
    for (int64_t h = 0; h < H; ++h) {
      float* s = S + (b * H + h) * E;
      float dot = 0.f;
      for (int64_t e = 0; e < E; ++e) {
        s[e] = w_att[h * E + e] * gq[b * E + e];
        dot += s[e] * b_key[e];
      }
      c0[b * H + h] = dot + key_att_.bias().data()[h];
    }
  });
  key_transposed_.apply(S, B * H, E, M, E);  // M[b, h] = S[b, h]·W_key
  // Key logits cᵀ (H, T) = M[b]·xᵀ from x, β, and x̄ (H, E) = β·x (into S) per sequence: one GEMM
  // each, so x is read once per product.
  parallel_for_workspaces(B, B > 1, worker_pool_, [&](int64_t b, Workspace& mine) {
    const uint8_t* kb = keep ? keep + b * keep_batch_stride : nullptr;
    const float* xb = x + b * T * E;
    float* c = mine.floats(1, H * T);  // (H, T)
    gemm(M + b * H * E, E, xb, E, /*b_transposed=*/true, c, T, H, T, E);
    float* beta = mine.floats(0, H * T);
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t t = 0; t < T; ++t) c[h * T + t] = (c[h * T + t] + c0[b * H + h]) / scale_;
      pool_weights(c + h * T, 1, T, kb ? kb + h * keep_head_stride : nullptr, beta + h * T);
    }
    gemm(beta, T, xb, E, false, S + b * H * E, E, H, E, T);
  });
  key_.apply(S, B * H, E, M, E);  // M[b, h] = W_key·x̄_h + b_key
  // gk[h-slice] = gq[h-slice] ⊙ M[b, h][h-slice].
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = h * d; i < (h + 1) * d; ++i) gk[b * E + i] = gq[b * E + i] * M[(b * H + h) * E + i];
}

Tensor FastSelfAttention::forward_upstream(const Tensor& xs_pad, const Mask& mask) const {
  const char* fn = "FastSelfAttention::forward_upstream";
  check_shape(xs_pad, {-1, -1, size_}, fn, "xs_pad", {"B", "T"});
  const int64_t B = xs_pad.dim(0), T = xs_pad.dim(1), E = size_, H = heads_;
  int64_t mask_batch_stride = 0, mask_head_stride = 0;
  if (!mask.empty()) {
    check(mask.ndim() == 3, fn, ": mask: expected (B, 1, T), (1, 1, T) or (B, H, T) with True = keep, got shape ",
          mask.shape(), " (2-D masks are rejected: upstream mis-broadcasts a (B, T) mask)");
    check((mask.dim(0) == B || mask.dim(0) == 1) && (mask.dim(1) == 1 || mask.dim(1) == H) && mask.dim(2) == T,
          fn, ": mask: expected shape (", B, " or 1, 1 or ", H, ", ", T, "), got ", mask.shape());
    mask_batch_stride = mask.dim(0) == 1 ? 0 : mask.dim(1) * T;
    mask_head_stride = mask.dim(1) == 1 ? 0 : T;
  }
  Tensor y = Tensor::uninitialized(Shape{B, T, E});  // every row written by the u pass below
  if (B * T == 0) return y;
  // Scratch from the layer's pool (grown only): slots 0 the (rows, W) projections, 1 gk, 2 u, 3-5
  // the folded key's.
  const WorkspacePool::Lease ws = pool_.acquire();
  float* gk = ws->floats(1, B * E);
  const uint8_t* keep = mask.empty() ? nullptr : mask.data();
  const bool folded = T >= kFoldedKeyTokensPerHead * H;
  const int64_t W = folded ? E + H : cache_width();  // rows [q | a], or [q | k | a]
  float* proj = ws->floats(0, B * T * W);             // fully written below
  if (folded) {
    project_query(xs_pad.data(), B * T, proj, W, E);
    folded_pooled_keys(xs_pad.data(), proj, B, T, keep, mask_batch_stride, mask_head_stride, gk, *ws);
  } else {
    project_rows(xs_pad.data(), B * T, proj);
    // The pooled key of each batch row: rows pool independently, one per thread (the BLAS calls
    // inside then run single-threaded), each with a workspace of its own.
    parallel_for_workspaces(B, B > 1, worker_pool_, [&](int64_t b, Workspace& mine) {
      pooled_key(proj + b * T * W, T, keep ? keep + b * mask_batch_stride : nullptr, mask_head_stride, gk + b * E,
                 scratch(mine, T));
    });
  }
  // u = gk ⊙ q and the residual y = q, over all B·T tokens.
  float* u = ws->floats(2, B * T * E);
  parallel_for(B * T, B * T >= threshold::kRows, [&](int64_t r) {
    const float* q = proj + r * W;
    const float* g = gk + (r / T) * E;
    float* ut = u + r * E;
    float* yt = y.data() + r * E;
    for (int64_t e = 0; e < E; ++e) {
      ut[e] = g[e] * q[e];
      yt[e] = q[e];
    }
  });
  // y = transform(u) + q (accumulate adds the bias too).
  transform_.apply(u, B * T, E, y.data(), E, /*accumulate=*/true);
  return y;
}

Tensor FastSelfAttention::forward(const Tensor& x, const Mask& key_padding_mask) const {
  const char* fn = "FastSelfAttention::forward";
  check_shape(x, {-1, -1, size_}, fn, "x", {"B", "T"});
  if (key_padding_mask.empty()) return forward_upstream(x, Mask{});
  return forward_upstream(x, keep_mask_from_padding(key_padding_mask, x.dim(0), x.dim(1), fn));
}

void FastSelfAttention::check_stream_options(const StreamOptions& o, const char* fn) const {
  check(o.window >= 1 && o.window <= limits::kMaxTokens, fn, ": options.window: expected the window length 1 <= L <= ",
        limits::kMaxTokens, ", got ", o.window);
  check(o.position >= -1 && o.position < o.window, fn, ": options.position: expected -1 <= position < window (",
        o.window, "), got ", o.position);
}

Tensor FastSelfAttention::stream_reference(const Tensor& x, const StreamOptions& options) const {
  const char* fn = "FastSelfAttention::stream_reference";
  check_stream_options(options, fn);
  check_shape(x, {-1, -1, size_}, fn, "x", {"B", "T"});
  return sliding_window_reference(x, options, [this](const Tensor& w) { return forward_upstream(w, Mask{}); });
}

std::unique_ptr<Stream> FastSelfAttention::open_stream(int64_t batch, const StreamOptions& options) const {
  return std::make_unique<FastSelfAttentionStream>(*this, batch, options);
}

// ---------------------------------------------------------------------------------------------

const StreamOptions& FastSelfAttentionStream::checked(const FastSelfAttention& layer, int64_t batch,
                                                    const StreamOptions& options) {
  check_range(batch, 1, limits::kMaxBatch, "FastSelfAttention::open_stream", "batch");
  layer.check_stream_options(options, "FastSelfAttention::open_stream");
  return options;
}

FastSelfAttentionStream::FastSelfAttentionStream(const FastSelfAttention& layer, int64_t batch,
                                                 const StreamOptions& options)
    : WindowedStream("FastSelfAttentionStream", batch, checked(layer, batch, options), layer.size_,
                     layer.cache_width(), {layer.heads_}, "batch, E, H, window, position"),
      layer_(layer) {
  layer.scratch(workspace_, length_);  // sized now: pushes allocate nothing
}

void FastSelfAttentionStream::stage(const float* x, int64_t n, float* rows) {
  if (static_cast<int64_t>(u_.size()) < n * d_model_) u_.resize(static_cast<size_t>(n * d_model_));
  layer_.project_rows(x, n, rows);
}

void FastSelfAttentionStream::window_output(int64_t, const float* rows, int64_t slot, float* y) {
  const int64_t E = d_model_;
  float* u = u_.data() + slot * E;
  const float* q = rows + position_ * layer_.cache_width();
  layer_.pooled_key(rows, length_, nullptr, 0, u, layer_.scratch(workspace_, length_));
  for (int64_t e = 0; e < E; ++e) {
    u[e] *= q[e];
    y[e] = q[e];
  }
}

void FastSelfAttentionStream::finish(int64_t c_out, float* out) {
  const int64_t E = d_model_;
  for (int64_t b = 0; b < batch_; ++b)  // rows still warming up: zeros in their leading slots
    std::fill_n(u_.data() + b * c_out * E, (c_out - emitted(b)) * E, 0.f);
  // y = transform(u) + q (accumulate adds the bias too).
  layer_.transform_.apply(u_.data(), batch_ * c_out, E, out, E, /*accumulate=*/true);
  for (int64_t b = 0; b < batch_; ++b)
    std::fill_n(out + b * c_out * E, (c_out - emitted(b)) * E, 0.f);
}

}  // namespace tokenmix
