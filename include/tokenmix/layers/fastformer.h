// tokenmix/layers/fastformer.h: Fastformer additive attention, exactly as ESPnet's
// espnet2.asr.layers.fastformer.FastSelfAttention, plus a sliding-window stream.
//
// Source: Wu et al., "Fastformer: Additive Attention Can Be All You Need" (arXiv 2108.09084); upstream
// module espnet2/asr/layers/fastformer.py @ 2291166f (ESPnet), used as the "fast_selfattn" branch of the
// Branchformer / E-Branchformer encoders. Spec: tests/data/reference/fastformer/SPEC.md.
//
// Math (B batch, T time, E = size, H = attention_heads, d = E / H; head h owns features [h·d, (h+1)·d)):
//   q = x·W_queryᵀ + b_query, k = x·W_keyᵀ + b_key                         (B, T, E)
//   a[h, t] = (q_t·W_query_att[h]ᵀ + b_query_att[h]) / sqrt(d)              (all E features of q_t)
//   α = pool(a) over t;   gq[h-slice] = Σ_t α[h, t] · q_t[h-slice]          (pooled query, E)
//   p_t = k_t ⊙ gq
//   c[h, t] = (p_t·W_key_att[h]ᵀ + b_key_att[h]) / sqrt(d);  β = pool(c)
//   gk[h-slice] = Σ_t β[h, t] · p_t[h-slice]                                (pooled key, E)
//   y_t = (gk ⊙ q_t)·W_transformᵀ + b_transform + q_t                       (B, T, E)
// The value is the query projection and the residual adds q (not x). pool = softmax over t; with a
// mask, padded logits are filled with the float32 minimum before the softmax and the padded weights
// are set to exactly 0 after it (ESPnet's rule). Padded positions still get an output and do not
// influence the others; a fully padded sequence gives α = β = 0, so y_t = q_t + b_transform (no NaN).
// Cost: O(B·T·E²) for the three E×E projections plus O(B·T·E·H) for the two score projections; linear in T.
//
// Folded key (forward, T >= kFoldedKeyTokensPerHead·H): k is never formed. With S[h] = W_key_att[h] ⊙ gq,
//   c[h, t] = (x_t·(S[h]·W_key)ᵀ + S[h]·b_key + b_key_att[h]) / sqrt(d)
//   gk[h-slice] = gq[h-slice] ⊙ (W_key·x̄_h + b_key)[h-slice],  x̄_h = Σ_t β[h, t] x_t
// (Σ_t β = 1, or β = gq[h-slice] = 0 for a fully padded head), so the key projection's O(T·E²) becomes
// O(H·E²) per sequence: two (H×E)·(E×E) products and O(T·E·H) for the logits and x̄. Exact in real
// arithmetic; in float32 it rounds differently from the explicit k (|Δy| ~ 1e-6 of |y|, well inside
// SPEC's 1e-5). Shorter sequences and the stream (whose gq changes with every window) form k.
//
// Dropout (dropout_rate) is applied upstream to gq, gk and the transform output only, never to
// weights; this inference library treats it as identity (eval mode).
//
// Training initialisation (not needed for inference): upstream constructs the Linears with PyTorch's
// default init, then ESPnet's global initialiser calls the module's espnet_initialization_fn, which
// draws every Linear weight (query, query_att, key, key_att, transform) from N(0, 0.02²) and sets
// every bias to 0. Use that distribution when creating a state_dict to train from scratch.
//
// Streaming: the pooling is global over the sequence, so the layer cannot stream causally. The
// stream (open_stream) is a sliding window instead: with options.window = L and options.position = P,
// once a batch row has seen L tokens every new token t emits the offline forward over the L tokens
// (t-L, t] at window position P (0 = oldest, -1 = last / newest). See FastSelfAttentionStream.
#pragma once

#include <memory>
#include <vector>

#include "tokenmix/core/tensor.h"
#include "tokenmix/core/workspace.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/streaming/stream.h"
#include "tokenmix/streaming/windowed_stream.h"

namespace tokenmix {

// Constructor arguments of the upstream module (same names).
struct FastSelfAttentionOptions {
  int64_t size = 0;             // E, 1 <= E <= 2^16
  int64_t attention_heads = 0;  // H >= 1 with E % H == 0
  double dropout_rate = 0.0;    // 0 <= p <= 1; identity at inference
  LinearOptions linear;  // precision and GEMM backend of the projections (ours, not an upstream argument)
  // Throws Error "FastSelfAttention: <option>: expected ..., got ..." for the first bad one.
  void validate() const;
};

class FastSelfAttention : public Layer {
 public:
  // size = E >= 1, attention_heads = H >= 1 with E % H == 0, 0 <= dropout_rate <= 1 (kept for the
  // record; identity at inference). Throws Error otherwise. Loads the upstream state_dict keys
  //   query.{weight (E, E), bias (E)}, query_att.{weight (H, E), bias (H)},
  //   key.{weight (E, E), bias (E)}, key_att.{weight (H, E), bias (H)}, transform.{weight (E, E), bias (E)};
  // throws Error listing missing, unexpected and mis-shaped keys.
  FastSelfAttention(const FastSelfAttentionOptions& options, const StateDict& state_dict);
  FastSelfAttention(int64_t size, int64_t attention_heads, double dropout_rate, const StateDict& state_dict)
      : FastSelfAttention(FastSelfAttentionOptions{size, attention_heads, dropout_rate, {}}, state_dict) {}

  std::string name() const override { return "fastformer"; }
  int64_t d_model() const override { return size_; }
  int64_t heads() const { return heads_; }
  int64_t head_dim() const { return head_dim_; }
  double dropout_rate() const { return dropout_rate_; }

  // Upstream forward(xs_pad, mask), with upstream's mask convention (named apart from the unified
  // forward below, whose mask means the opposite).
  //   xs_pad: (B, T, E), T >= 0
  //   mask:   True / non-zero = keep (non-padding), 0 = padding; (B, 1, T), (1, 1, T) or per head
  //           (B or 1, H, T); or empty (no mask). 2-D masks are rejected (upstream mis-broadcasts a
  //           (B, T) mask when B == H).
  // Returns y (B, T, E). Throws Error "FastSelfAttention::forward_upstream: <arg>: expected ..." on a shape mismatch.
  Tensor forward_upstream(const Tensor& xs_pad, const Mask& mask) const;

  // Unified API: key_padding_mask (B, T) with True = padded, or empty; converted to the (B, 1, T) keep
  // mask. Throws Error on a shape mismatch.
  Tensor forward(const Tensor& x, const Mask& key_padding_mask = {}) const override;

  // Sliding-window reference: x (B, T, E); options.window = L >= 1, options.position = P in [-1, L).
  // Returns (B, max(0, T - L + 1), E) whose row s is forward_upstream(x[:, s:s+L, :], {})[:, P, :] (P = -1: L - 1).
  // Throws Error on invalid options or a shape mismatch. Costs O(T·L·E²): it re-runs the forward.
  Tensor stream_reference(const Tensor& x, const StreamOptions& options) const override;

  // Opens a FastSelfAttentionStream (batch >= 1 rows, options as in stream_reference). Throws Error
  // on invalid batch or options.
  StreamOptionSpec stream_options_accepted() const override { return {false, true, limits::kMaxTokens}; }
  std::unique_ptr<Stream> open_stream(int64_t batch, const StreamOptions& options = {}) const override;
  const Linear& projection() const override { return transform_; }
  // All projections, key.weight twice (as loaded and transposed, for the folded key).
  int64_t weight_bytes() const override {
    return query_.weight_bytes() + query_att_.weight_bytes() + key_.weight_bytes() + key_transposed_.weight_bytes() +
           key_att_.weight_bytes() + transform_.weight_bytes();
  }
  // forward folds the key projection into the pooling (see above) from T >= this · H tokens: the
  // fold costs two (H×E)·(E×E) products per sequence in place of the (T×E)·(E×E) one.
  static constexpr int64_t kFoldedKeyTokensPerHead = 4;

  // Shared building blocks of forward and the stream (rows of width cache_width()):
  // one token's cached row is [q (E) | k (E) | a (H)], a = the scaled query-attention logits.
  int64_t cache_width() const { return 2 * size_ + heads_; }
  // x (rows, E) -> out (rows, cache_width()).
  void project_rows(const float* x, int64_t rows, float* out) const;
  // Scratch for pooled_key(): sized for windows of up to T tokens; grown only.
  struct Scratch {
    float* logits;   // (T, H) key-attention logits c
    float* weights;  // (H, T) pooling weights α, then β
    float* scores;   // (H, E) W_key_att ⊙ gq
    float* gq;       // (E)
  };
  // Scratch for T tokens in ws (its buffers 0-3, grown to fit; valid until they grow again).
  Scratch scratch(Workspace& ws, int64_t T) const;
  // The pooled key gk (E) of T >= 1 cached rows (stride cache_width(), oldest first). keep, when
  // non-null, is read as keep[h * keep_head_stride + t] (non-zero = keep). scratch must be reserved for T.
  void pooled_key(const float* rows, int64_t T, const uint8_t* keep, int64_t keep_head_stride, float* gk,
                  const Scratch& scratch) const;

 private:
  int64_t size_, heads_, head_dim_;
  double dropout_rate_;
  float scale_;                         // sqrt(d): the score logits are divided by it
  Linear query_;      // query: (E, E), (E)
  Linear query_att_;  // query_att: (H, E), (H)
  Linear key_;        // key: (E, E), (E)
  Linear key_transposed_;  // key.weight transposed: (E, E), no bias; S·W_key of the folded key
  Linear key_att_;    // key_att: (H, E), (H)
  Linear transform_;  // transform: (E, E), (E)
  // forward_upstream()'s scratch: one workspace per concurrent call, and one per pooling worker.
  mutable WorkspacePool pool_, worker_pool_;
  // x (rows, E) -> q into out[:, 0, E) and a into out[:, a_offset, a_offset + H), row stride ld.
  void project_query(const float* x, int64_t rows, float* out, int64_t ld, int64_t a_offset) const;
  // The pooled query gq (E) of T >= 1 tokens: q_t at q + t·ld, a_t at a + t·ld; keep as above;
  // alpha (H, T) scratch. Heads in parallel when parallel.
  void pooled_query(const float* q, const float* a, int64_t ld, int64_t T, const uint8_t* keep,
                    int64_t keep_head_stride, float* alpha, float* gq, bool parallel) const;
  // The folded key (see above) of B sequences of T tokens: x (B, T, E), rows (B·T, E + H) = [q | a],
  // keep[b * keep_batch_stride + h * keep_head_stride + t] or null -> gk (B, E). Scratch from ws
  // (buffers 3-5) and worker_pool_.
  void folded_pooled_keys(const float* x, const float* rows, int64_t B, int64_t T, const uint8_t* keep,
                          int64_t keep_batch_stride, int64_t keep_head_stride, float* gk, Workspace& ws) const;
  // Checks options.window >= 1 and -1 <= options.position < window; fn names the caller.
  void check_stream_options(const StreamOptions& options, const char* fn) const;
  friend class FastSelfAttentionStream;
};

// Sliding-window Fastformer stream (open_stream). Per batch row it caches, for each of the last L
// tokens, the row [q_t (E) | k_t (E) | a_t (H)]: the query and key projections and the scaled
// query-attention logits, in a SlidingWindow of width 2E + H. A pushed token costs
//   O(E²)      its three projections (q, k: E×E; a: H×E), done once per token for the whole chunk,
//   O(L·E·H)   the pooling over the window: α from the cached logits, gq (O(L·E)), the key-attention
//              logits c = k·(W_key_att ⊙ gq)ᵀ (one (L×E)·(E×H) GEMM; they depend on gq, which changes
//              with every window, so they cannot be cached), β and gk (O(L·E)),
//   O(E²)      the transform of the emitted token,
// i.e. O(L·E·H + E²) per token instead of the O(L·E²) of re-running the forward on the window.
// Memory: B·2L·(2E + H) floats for the windows plus scratch grown to the largest chunk; push
// allocates nothing once a chunk of that size has been seen.
//
// push, reset, reset_row, save, restore, emitted(b), seen(b): see WindowedStream (outputs
// right-aligned on the chunk's last token, zeros in the leading slots of rows still warming up).
class FastSelfAttentionStream : public WindowedStream {
 public:
  // layer must outlive the stream. Throws Error "FastSelfAttention::open_stream: ..." on batch < 1 or
  // invalid options.
  // State file: metadata stream = "FastSelfAttentionStream", "config" (batch, E, H, L, P), the windows
  // under "window.".
  FastSelfAttentionStream(const FastSelfAttention& layer, int64_t batch, const StreamOptions& options);

 protected:
  // project_rows: the [q | k | a] row of every new token.
  void stage(const float* x, int64_t n, float* rows) override;
  // Pooled key of the window; stores the transform input gk ⊙ q_P (q_P: the query at position P) and
  // the residual y = q_P.
  void window_output(int64_t b, const float* rows, int64_t slot, float* y) override;
  // y += transform(gk ⊙ q_P) for all outputs of the push in one GEMM.
  void finish(int64_t c_out, float* out) override;

 private:
  // Checks batch and options (in that order) with open_stream's messages; returns options.
  static const StreamOptions& checked(const FastSelfAttention& layer, int64_t batch, const StreamOptions& options);
  const FastSelfAttention& layer_;
  Workspace workspace_;  // pooled_key()'s scratch, sized for the window at open
  std::vector<float> u_;  // (B·C, E) transform input: grown only
};

}  // namespace tokenmix
