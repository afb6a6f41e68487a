// tokenmix/layers/hypermixing.h: SpeechBrain multi-head HyperMixing (HyperConformer token mixing),
// exactly as speechbrain.nnet.hypermixing.HyperMixing (with its HyperNetwork and ParallelMLPs), plus
// a sliding-window stream.
//
// Sources: Mai et al., "HyperMixer: An MLP-based Low Cost Alternative to Transformers" (ACL 2023,
// arXiv 2203.03691); Mai et al., "HyperConformer: Multi-head HyperMixer for Efficient Speech
// Recognition" (Interspeech 2023, arXiv 2305.18281). Upstream module speechbrain/nnet/hypermixing.py @
// 9c826ef3 (SpeechBrain). Spec: tests/data/reference/hypermixing/SPEC.md.
//
// Math (B batch, T tokens, E = input_output_dim, H = num_heads, d = E / H, K = token-mixing width per
// head = hypernet_size / H, or hypernet_size when fix_tm_hidden_size; head h <-> channels [h·d, (h+1)·d)):
//   m[b, t]   = 0 where key_padding_mask[b, t] is true (padded), else 1 (all 1 without a mask)
//   x̃         = x ⊙ m                                      padded tokens are zeroed
//   z         = x̃ + pe[:T]                                 hypernetwork input only (absolute positions)
//   Wg[b,h,t] = (C_g,h · GELU(A_g,h · z[b,t,h] + α_g,h) + γ_g,h) · m[b, t]     g = 1, 2 (W2 = W1 if tied)
//               A (d x d) = fc1_weights[h], α = fc1_biases[h], C (K x d) = fc2_weights[h], γ = fc2_biases[h]
//   S[b,h]    = x̃[b,:,h]ᵀ · W1[b,h]                       (d x K), a sum over ALL tokens (bidirectional)
//   o[b,t,h]  = W2[b,h,t] · GELU(S[b,h])ᵀ                  (d), no biases, no scaling
//   y         = LayerNorm_E(o)                             eps 1e-5, affine; no residual
// GELU is the exact erf form. Upstream's cost: (tied ? 1 : 2)·B·T·E·(d + K) MACs for the hypernetworks
// and 2·B·T·E·K for the mixing; linear in T. tokenmix never forms W1, W2: it applies their last layer
// (C, γ) inside the mixing products (see HyperMixing::hidden below), (tied ? 1 : 2)·B·T·E·d +
// 2·B·T·E·d + 2·B·E·d·K MACs, about 3x fewer at d = 64, K = 256. The result equals the formula above
// up to float32 rounding.
// Upstream quirks kept: key/value/attn_mask/pos_embs of the upstream forward are ignored (self-mixing
// only, always bidirectional); the padded output rows are exactly layer_norm.bias; masking multiplies by
// 0, so a NaN/Inf in a padded slot turns the whole batch row into NaN, as upstream; T > max_length
// throws (upstream raises a size-mismatch RuntimeError).
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

// Constructor arguments of the upstream module (same names and defaults).
struct HyperMixingOptions {
  int64_t input_output_dim = 0;     // E: even (sinusoidal PE), divisible by num_heads, <= 2^16
  int64_t hypernet_size = 0;        // token-mixing width H·K in total (divisible by num_heads), <= 2^16
  bool tied = false;                // W2 = W1 (one hypernetwork)
  int64_t num_heads = 1;            // H >= 1
  bool fix_tm_hidden_size = false;  // K = hypernet_size instead of hypernet_size / H
  int64_t max_length = 3000;        // rows of the positional table (1 <= max_length <= 2^20,
                                    // limits::kMaxTokens); forward needs T <= max_length
  LinearOptions linear;  // precision and GEMM backend of the projections (ours, not an upstream argument)
  // Throws Error "HyperMixing: <option>: expected ..., got ..." for the first bad one.
  void validate() const;
};

class HyperMixing : public Layer {
 public:
  // Validates options (throws Error "HyperMixing: <option>: expected ..., got ...") and loads the
  // upstream state_dict keys:
  //   hyper.w1_gen.fc1_weights (H, d, d), fc1_biases (H, d), fc2_weights (H, K, d), fc2_biases (H, K)
  //   hyper.w2_gen.* (same shapes)
  //   layer_norm.weight (E), layer_norm.bias (E)
  //   positional_encoding.pe (1, max_length, E)   optional: the float32 sinusoidal table when absent
  // With tied = true the hyper.w2_gen.* entries are aliases of hyper.w1_gen.* (upstream always lists
  // them): they may be absent, and when present they must equal hyper.w1_gen.* (Error otherwise).
  // Throws one Error listing missing, unexpected and mis-shaped keys.
  HyperMixing(const HyperMixingOptions& options, const StateDict& state_dict);

  std::string name() const override { return "hypermixing"; }
  int64_t d_model() const override { return E_; }
  int64_t heads() const { return H_; }
  int64_t head_dim() const { return d_; }
  // K: the token-mixing MLP width per head.
  int64_t mixing_width() const { return K_; }
  bool tied() const { return tied_; }
  int64_t max_length() const { return max_length_; }
  // The positional table (max_length, E) in use (loaded or computed).
  const Tensor& positional_table() const { return pe_; }

  // Upstream forward(query, key, value, attn_mask, key_padding_mask) with query = x.
  //   x:                (B, T, E), 1 <= T <= max_length
  //   key_padding_mask: (B, T), non-zero = padded (ignored), or empty. Other shapes are rejected
  //                     (upstream silently mis-broadcasts a 1-D (T) mask).
  //   attn_weights:     when non-null, receives upstream's second output: zeros (B, T, T). It carries
  //                     no information (HyperMixing has no attention map); pass nullptr to skip it.
  // Returns (B, T, E). Throws Error on a shape mismatch or T > max_length.
  Tensor forward(const Tensor& x, const Mask& key_padding_mask, Tensor* attn_weights) const;
  Tensor forward(const Tensor& x, const Mask& key_padding_mask = {}) const override;

  // Sliding-window definition (HyperMixing pools over the whole sequence, so it cannot be causal):
  // options.window = L (1 <= L <= max_length), options.position = P (0 <= P < L, -1 = L - 1). For x
  // (B, T, E) returns (B, max(T - L + 1, 0), E): row i is forward(x[:, i : i + L])[:, P], i.e. the
  // window positions are window-relative (pe rows 0..L-1). Runs forward on every window.
  // Throws Error on invalid options or a shape mismatch.
  Tensor stream_reference(const Tensor& x, const StreamOptions& options) const override;
  // Opens a HyperMixingStream (below). Throws Error as stream_reference for invalid options and for
  // batch < 1. The layer must outlive the stream.
  StreamOptionSpec stream_options_accepted() const override { return {false, true, max_length_}; }
  std::unique_ptr<Stream> open_stream(int64_t batch, const StreamOptions& options = {}) const override;
  const Linear& projection() const override { return gen1_.fc1.front(); }
  int64_t weight_bytes() const override;

 private:
  friend class HyperMixingStream;
  // One ParallelMLPs hypernetwork (d -> d -> K per head): per head h the views fc1[h] of
  // fc1_weights[h] (d, d) and fc1_biases[h] (d), and fc2[h] of fc2_weights[h] (K, d) and
  // fc2_biases[h] (K).
  struct Generator {
    std::vector<Linear> fc1, fc2;
  };
  int64_t E_, H_, d_, K_, max_length_;
  bool tied_;
  Generator gen1_, gen2_;  // w1_gen, w2_gen (gen2_ shares gen1_'s tensors when tied)
  Tensor ln_w_, ln_b_;     // layer_norm: (E), (E)
  Tensor pe_;              // (max_length, E)
  // forward()'s scratch: one workspace per concurrent call, and one per worker of the token mixing.
  mutable WorkspacePool pool_, worker_pool_;

  // The generated weights are W_h = G_h·C_hᵀ + 1·γ_hᵀ (rows, K) with G_h = GELU(z_h·A_hᵀ + α_h) the
  // hypernetwork's hidden layer (A, α = fc1, C, γ = fc2). Token mixing only needs products with them,
  // so W is never formed: x̃_hᵀ·W1_h = (x̃_hᵀ·G1_h)·C1_hᵀ + (x̃_hᵀ·1)·γ1_hᵀ, and W2_h·Rᵀ =
  // G2_h·(C2_hᵀ·Rᵀ) + 1·(R·γ2_h)ᵀ. Per (batch row, head) that is 4·T·d² + 2·d²·K MACs instead of the
  // 2·T·d·K (generation) + 2·T·d·K (mixing) of forming them, about 3x fewer at T = 256, d = 64, K = 256.
  //
  // G = the hidden layer of hypernetwork g for z, both head-major (H, rows, d): head h's rows are
  // dense, so each head's layer is one GEMM on contiguous rows (for rows = 1, (H, 1, d) is the (E)
  // row itself).
  void hidden(const Generator& g, const float* z, int64_t rows, float* G) const;
  // w (K) = row g_row (d: head h's slice of a G row) of head h's generated weights.
  void generated_row(const Generator& g, int64_t h, const float* g_row, float* w) const;
  // R (d, K) = GELU(x̃_hᵀ·W1_h) for head h over rows tokens: x (rows, stride ldx) and G1 (rows, stride
  // ldg) are head h's d columns of x̃ and of hypernetwork 1's hidden layer. P: (d, d) scratch.
  void mixing_hidden(int64_t h, const float* x, int64_t ldx, const float* G1, int64_t ldg, int64_t rows, float* P,
                     float* R) const;
  // out (rows, stride ldo; head h's d columns) = W2_h·Rᵀ from hypernetwork 2's hidden layer G2 (rows,
  // stride ldg; head h's d columns). M: mixing_scratch(rows) floats of scratch. When 2K <= d
  // (forms_w2()), W2_h is formed as upstream does (cheaper there, and exact where LayerNorm cancels a
  // per-token scale, e.g. K = 1); otherwise it is applied factored, as above.
  bool forms_w2() const;
  int64_t mixing_scratch(int64_t rows) const;
  void mixing_output(int64_t h, const float* R, const float* G2, int64_t ldg, int64_t rows, float* M, float* out,
                     int64_t ldo) const;
  // y (rows, E) = LayerNorm(o (rows, E)).
  void layer_norm(const float* o, int64_t rows, float* y) const;
  void check_stream_options(const StreamOptions& options, const char* fn) const;
};

// Sliding-window HyperMixing stream (StreamOptions::window = L, position = P).
//
// Once a batch row has seen L tokens, every further token completes a window and yields one output:
// forward(last L tokens)[P] (stream_reference). push, reset, reset_row, save, restore, seen(b),
// emitted(b): see WindowedStream (outputs right-aligned on the chunk's last token, zeros in the
// leading slots of rows still warming up).
//
// What is cached, and what cannot be:
//   * The positional table is window-relative: a token's position changes at every slide, so its
//     hypernetwork input x + pe[j] and everything downstream (the hidden layer, S = x̃ᵀ·W1, GELU(S))
//     must be recomputed for the whole window at every step. S in particular is NOT a running sum.
//   * Layer 1 of the hypernetwork is affine, so its position-independent part is cached per token:
//     each pushed token stores [x (E) | A1·x (E)] in the SlidingWindow (width 2E), computed once on
//     arrival; the position part Q[j] = A1·pe[j] + α1 (L, E) is tabulated once per stream. A step then
//     needs only adds + GELU for layer 1 (the float rounding differs from forward's A1·(x + pe[j]) by
//     ~1 ulp; stream vs stream_reference agree to ~1e-5, not bit-for-bit).
//   * W1 is never formed: S = (x̃ᵀ·G1)·C1ᵀ + (x̃ᵀ·1)·γ1ᵀ from the hidden layer G1 (see
//     HyperMixing::mixing_hidden).
//   * Only the output at window position P is emitted, so W2 (layer 1 and 2 of the second
//     hypernetwork) is computed for that single token only (its hidden row from G1 when tied), and
//     the token mixing reduces to one (d x K)·(K) product per head.
// Cost per completed window: L·E·d MACs (x̃ᵀ·G1) + E·d·K (S) + L·E GELUs + E·K GELUs + E·(d + K) +
// E·K MACs for W2 and the output; compare about 4·L·E·d + 2·E·d·K MACs for a forward over the window.
// Arrival costs E·d MACs per token. Memory: the window (B, L, 2E) floats + the (L, E) table + O(L·E +
// E·K) scratch (per head), all allocated by open_stream; push allocates nothing once a chunk of its
// size has been seen (the chunk-sized buffers only grow). Threads: the heads of a window run in
// parallel, and a push of a single token already uses the calling thread's OpenMP setting (a token
// costs about 1 ms at E = 512, L = 257, far more than waking a thread).
// Not available with a key_padding_mask (every pushed token is a real token).
class HyperMixingStream : public WindowedStream {
 public:
  // Throws Error "HyperMixing::open_stream: ..." on batch < 1 or invalid options. The layer must
  // outlive the stream. State file: metadata stream = "HyperMixingStream", "config" (batch, E, H, K,
  // tied, L, P), "window.*" (the SlidingWindow).
  HyperMixingStream(const HyperMixing& layer, int64_t batch, const StreamOptions& options);

 protected:
  // [x | A1·x] of every new token (one GEMM per head over all B·C tokens).
  void stage(const float* x, int64_t n, float* rows) override;
  // Output of a full window R (L, 2E) into y (E).
  void window_output(int64_t b, const float* R, int64_t slot, float* y) override;
  int64_t parallel_min_tokens() const override { return 1; }

 private:
  // Checks batch and options (in that order) with open_stream's messages; returns options.
  static const StreamOptions& checked(const HyperMixing& layer, int64_t batch, const StreamOptions& options);
  const HyperMixing& layer_;
  const int64_t E_, H_, d_, K_;
  std::vector<float> pos_table_;        // (L, E): A1·pe[j] + α1
  std::vector<float> hidden_, p_, s_, w2_;  // per head: (H, L, d), (H, d, d), (H, d, K), (H, K) scratch
  std::vector<float> z_, h2_, o_;           // (E), (E), (E) scratch
};

}  // namespace tokenmix
