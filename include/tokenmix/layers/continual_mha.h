// tokenmix/layers/continual_mha.h: continual (redundancy-free streaming) multi-head attention,
// exactly as continual-inference's SingleOutputMultiheadAttention (CoSiMHA) and
// RetroactiveMultiheadAttention (CoReMHA), with a numerically stable retroactive update.
//
// Source: Hedegaard & Iosifidis, "Continual Transformers: Redundancy-Free Attention for Online
// Inference" (arXiv 2201.06268, ICLR 2023); upstream modules
// continual/multihead_attention/{single_output_mha,retroactive_mha}.py @ 37dac98b (continual-inference
// v1.2.4). Spec: tests/data/reference/continual/SPEC.md.
//
// Both are PyTorch 1.13 nn.MultiheadAttention (same state_dict, same clip-wise forward()) plus a
// token-by-token stream over a sliding window of L = sequence_len tokens
// (N batch, E = embed_dim, H = num_heads, D = E / H, S key length):
//   q = x_q·W_qᵀ + b_q, k = x_k·W_kᵀ + b_k, v = x_v·W_vᵀ + b_v      (split into H heads of D)
//   P_h = softmax((q_h / sqrt(D))·k_hᵀ) over keys,   out = concat_h(P_h·v_h)·W_oᵀ + b_o
// Streaming: after L-1 warm-up tokens (no output), the token t yields
//   SingleOutput: forward(window t-L+1 .. t) at window position query_index, shape (N, E);
//   Retroactive:  forward(window t-L+1 .. t) for all L window positions, shape (N, L, E).
//
// Cost per streamed token (tokenmix): SingleOutput 3E² + E² (one token's projections) + O(L·E)
// (cached K/V of the window). Retroactive 6E² + O(L·H·E): every cached query row keeps a running
// max m, denominator d and numerator A already passed through out_proj per head
// (A_h = Σ_j exp(s_j - m)·W_o[:, h]·v_hj, E floats per head), so the L output rows need no E×E
// projection (upstream: O(L·E²)); per token the q/k/v projections (3E²) and out_proj's head slices
// applied to the new value, the new row's context and the leaving value (3E²). Keys leaving the
// window are subtracted; a row whose denominator falls below 1/4 of its peak since its last exact
// evaluation is recomputed exactly over the window, so there is no overflow (upstream's exp without
// max subtraction gives NaN once logits exceed ~88) and no catastrophic cancellation.
//
// Deliberate differences from upstream (SPEC section 7):
//   * query_index must lie in [-L, L) (upstream accepts < -L in step mode, quirk 7);
//   * embed_dim_second requires batch_first (quirk 8);
//   * forward_steps in seq-first layout returns (T', N, E), not (T', 1, N, E) (quirk 2; same element order);
//   * update_state=false before the first step works (returns no output) instead of raising (quirk 9);
//   * Retroactive with sequence_len = 1 works (upstream crashes);
//   * inference only: dropout is accepted and never applied (eval mode);
//   * fully masked query rows in forward() give probability 0 and context 0, not NaN (kernels/attention.h);
//   * masks: bool only (float additive masks and per-head (N·H, T, S) attn_masks are rejected).
#pragma once

#include <memory>
#include <optional>

#include "tokenmix/core/tensor.h"
#include "tokenmix/core/workspace.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/streaming/stream.h"

namespace tokenmix {

// Constructor arguments (PyTorch MHA's plus continual's own; SPEC section 2).
struct ContinualMhaOptions {
  int64_t embed_dim = 0;     // E, 1 <= E <= 2^16 (limits::kMaxFeatures)
  int64_t num_heads = 0;     // H >= 1, E % H == 0
  int64_t sequence_len = 0;  // L, the window: 1 <= L <= 2^20 (limits::kMaxTokens)
  double dropout = 0.0;      // accepted, never applied (inference)
  bool bias = true;          // false removes in_proj_bias and out_proj.bias
  bool add_bias_kv = false;  // forward() only; streaming throws
  bool add_zero_attn = false;  // forward() only; streaming throws
  int64_t kdim = 0, vdim = 0;  // 0 = E, else <= 2^16; != E gives separate q/k/v weights, forward() only
  // Layout of forward()/forward_steps(): batch_first (N, T, E), else seq-first (T, N, E); unset =
  // the class default (SingleOutput true, Retroactive false, as upstream).
  std::optional<bool> batch_first;
  bool embed_dim_second = false;      // (N, E, T) layout; requires batch_first
  int64_t query_index = -1;           // SingleOutput only: window position of the query, -L <= qi < L
  bool single_output_forward = true;  // SingleOutput only: forward() computes only query_index's query
  // Upstream forward() returns (o, attn_weights) when true, else o. Kept for the Python drop-in call
  // (and checkpoints); the C++ forward returns o and fills attn_weights when asked either way.
  bool forward_returns_attn_mask = true;
  LinearOptions linear;  // precision and GEMM backend of the projections (ours, not an upstream argument)
  // Throws Error "<cls>: <option>: expected ..., got ..." for the first bad option; batch_first
  // unset means batch_first_default (the class's). query_index is checked by SingleOutput.
  void validate(const char* cls, bool batch_first_default) const;
};

namespace detail {
class ContinualStreamImpl;
}

// Shared by both classes: weights, PyTorch MHA forward() and the upstream-style step API.
class ContinualMultiheadAttention : public Layer {
 public:
  ~ContinualMultiheadAttention() override;

  std::string name() const override { return "continual"; }
  int64_t d_model() const override { return E_; }
  int64_t heads() const { return H_; }
  int64_t head_dim() const { return D_; }
  int64_t sequence_len() const { return L_; }
  const ContinualMhaOptions& options() const { return opt_; }
  // Steps the stream output lags the newest token (SPEC section 5).
  virtual int64_t delay() const = 0;

  // Upstream forward(query, key, value, key_padding_mask, need_weights, attn_mask) in the configured
  // layout: batch_first (N, T, E), embed_dim_second (N, E, T), else seq-first (T, N, E).
  //   query:            (N, T, E) in the layout
  //   key, value:       (N, S, kdim) / (N, S, vdim) in the layout, or empty (= query, self-attention)
  //   key_padding_mask: (N, S), True = ignore, or empty
  //   attn_mask:        (T, S), True = not allowed, or empty
  //   attn_weights:     when non-null, receives the head-averaged probabilities (N, T_q, S'), S' = S
  //                     (+1 with add_bias_kv, +1 with add_zero_attn)
  // Returns the output in the layout; T_q = 1 for SingleOutput with single_output_forward (the query
  // at query_index, Python indexing), else T. Throws Error on shape mismatches, a query_index outside
  // [-T, T) or a mask of an unsupported kind.
  Tensor forward(const Tensor& query, const Tensor& key, const Tensor& value, const Mask& key_padding_mask,
                 const Mask& attn_mask, Tensor* attn_weights) const;

  // Unified API (Layer::forward): self-attention of x (B, T, E) (always batch-first, whatever the
  // layout options) with key_padding_mask (B, T), True = padded. Returns (B, T, E), every query's
  // output, as the Layer contract says, also for SingleOutput with single_output_forward (whose
  // upstream forward above returns only query_index's (B, 1, E)).
  Tensor forward(const Tensor& x, const Mask& key_padding_mask = {}) const override;

  // Opens an independent stream of `batch` rows (see the derived classes for the chunk outputs).
  // options.window must be 0 or L and options.left_context 0 (the window is sequence_len);
  // options.position is ignored (SingleOutput uses query_index). Throws Error on other options, on
  // batch < 1 and for configurations that cannot stream.
  StreamOptionSpec stream_options_accepted() const override { return {}; }
  std::unique_ptr<Stream> open_stream(int64_t batch, const StreamOptions& options = {}) const override;
  const Linear& projection() const override { return out_; }
  int64_t weight_bytes() const override {
    return qkv_[0].weight_bytes() + qkv_[1].weight_bytes() + qkv_[2].weight_bytes() + out_.weight_bytes() +
           tensor_bytes(bias_k_) + tensor_bytes(bias_v_);
  }

 protected:

  // Loads in_proj_weight (3E, E) (or q/k/v_proj_weight with kdim/vdim), in_proj_bias (3E),
  // out_proj.weight (E, E), out_proj.bias (E), bias_k / bias_v (1, 1, E). Throws Error on invalid
  // options and on missing, unexpected or mis-shaped keys. cls names the class in errors.
  ContinualMultiheadAttention(const char* cls, const ContinualMhaOptions& options, bool batch_first_default,
                              const StateDict& state_dict);
  bool single_output() const { return single_output_; }
  // Checks open_stream options; fn names the caller.
  void check_stream_options(const StreamOptions& options, const char* fn) const;
  virtual std::unique_ptr<detail::ContinualStreamImpl> make_stream(int64_t batch) const = 0;
  // Projected inputs: rows x (rows, in) -> y (rows, E) for part 0 = q, 1 = k, 2 = v (unscaled).
  void project(int part, const float* x, int64_t rows, float* y) const;
  void project_out(const float* ctx, int64_t rows, float* y) const;
  // Rows of one head through its slice of out_proj (no bias): y[r] (E) = W_o[:, hD:(h+1)D]·x[r],
  // x (rows, D) at row stride ldx, y (rows, E) at row stride ldy.
  void project_value_head(int64_t h, const float* x, int64_t rows, int64_t ldx, float* y, int64_t ldy) const;
  // Batch-first core of forward(): q_in (N, T, E), k_in (N, S, kdim), v_in (N, S, vdim). Returns
  // (N, 1, E) for SingleOutput with single_output_forward unless all_queries, else (N, T, E).
  Tensor forward_bf(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Mask& kpm,
                    const Mask& attn_mask, Tensor* attn_weights, const char* fn, bool all_queries = false) const;
  // Projects x (B, T, E) and attends each window of L tokens; helper of the stream references.
  struct Projected {
    Tensor q, k, v;  // (B, T, E), q unscaled
  };
  Projected project_all(const Tensor& x, const char* fn) const;

  friend class detail::ContinualStreamImpl;
  friend class ContinualSteps;
  const char* cls_;
  ContinualMhaOptions opt_;
  bool batch_first_, single_output_ = false;
  int64_t E_, H_, D_, L_, kdim_, vdim_;
  float scale_;  // 1 / sqrt(D)
  Linear qkv_[3];   // q, k, v: row blocks of in_proj_weight (E, E), or q/k/v_proj_weight
                    // (E, E|kdim|vdim); with slices of in_proj_bias (E) or no bias
  Linear out_;      // out_proj.weight (E, E), out_proj.bias (E) or none
  Tensor bias_k_, bias_v_;  // (1, 1, E) with add_bias_kv, else empty
  mutable WorkspacePool pool_;  // forward()'s scratch, one workspace per concurrent call

 private:
  // (N, C, E) batch-first copy of a forward()-layout tensor.
  Tensor to_batch_first(const Tensor& x, const char* fn, const char* arg, int64_t width) const;
};

// The upstream step API of a continual module (continual-inference's forward_step / forward_steps /
// clean_state) with its state held here, not in the layer (which stays immutable and shareable):
// ContinualSteps steps(layer); steps.forward_step(x). Not thread-safe; the layer must outlive it.
// open_stream() is the chunked, saveable form of the same state.
class ContinualSteps {
 public:
  explicit ContinualSteps(const ContinualMultiheadAttention& layer);
  ~ContinualSteps();
  // query/key/value: (N, E) (key/value empty = query; no masks). Returns an empty tensor while
  // warming up (upstream None), else SingleOutput (N, E), Retroactive (N, L, E) batch-first,
  // (L, N, E) seq-first, (N, E, L) embed_dim_second. update_state = false returns the same output
  // without changing the state. The batch size is fixed by the first step until clean_state().
  // Throws Error "<Class>::forward_step: ..." on shape mismatches, a changed batch size, or a
  // configuration that cannot stream (add_bias_kv, add_zero_attn, kdim/vdim != E).
  Tensor forward_step(const Tensor& query, const Tensor& key = {}, const Tensor& value = {},
                      bool update_state = true);
  // forward_step over the time axis of X (forward() layout); stacks the T' outputs: SingleOutput
  // (N, T', E) batch-first, (T', N, E) seq-first, (N, E, T') embed_dim_second; Retroactive
  // (N, T', L, E), (T', L, N, E), (N, E, T', L). Empty tensor when no step produced an output.
  Tensor forward_steps(const Tensor& query, const Tensor& key = {}, const Tensor& value = {},
                       bool update_state = true);
  // Forgets the state: the next L-1 steps warm up again.
  void clean_state();

 private:
  const ContinualMultiheadAttention& layer_;
  std::unique_ptr<detail::ContinualStreamImpl> state_;  // null = clean
  // q, k, v (N, C, E) batch-first through the state (or a copy of it when !update_state).
  Tensor run(const Tensor& q, const Tensor& k, const Tensor& v, bool update_state, const char* fn);
};

// CoSiMHA: the stream emits one output per token, the attention of the query at window position
// query_index over the window's keys and values.
class SingleOutputMultiheadAttention : public ContinualMultiheadAttention {
 public:
  // See ContinualMhaOptions; batch_first defaults to true. Throws Error on E % H != 0, L < 1,
  // query_index outside [-L, L), embed_dim_second without batch_first, or a bad state_dict.
  SingleOutputMultiheadAttention(const ContinualMhaOptions& options, const StateDict& state_dict);
  // L - qi - 1 for qi >= 0, else -qi - 1.
  int64_t delay() const override;
  // Stream definition: x (B, T, E) -> (B, max(T - L + 1, 0), E), row t = forward(x[:, t : t+L])
  // at query_index. Throws Error on a shape mismatch or invalid options.
  Tensor stream_reference(const Tensor& x, const StreamOptions& options) const override;
  // Stream::push((B, C, E)) returns (B, C_out, E): one row per pushed token whose index since the
  // stream was opened or reset() is >= L-1. A row restarted by reset_row(b) gives zeros until it has
  // seen L tokens again. Per token: one token's projections + O(L·E); no allocation after the
  // first chunk of a given size.

 private:
  std::unique_ptr<detail::ContinualStreamImpl> make_stream(int64_t batch) const override;
};

// The typed extra output of a RetroactiveMultiheadAttention stream (open_stream() returns a Stream
// that also implements this; RetroactiveMultiheadAttention::window_outputs(stream) reaches it).
class RetroactiveWindows {
 public:
  virtual ~RetroactiveWindows() = default;
  // The whole updated windows of the last push: (B, C_out, L, E), entry [b, c, l] = the output at
  // window position l (oldest first) of the window completed by output c; its last position
  // (l = L - 1) is what push returned. A view of the stream's buffer valid until the next call.
  virtual Tensor window_outputs() const = 0;
};

// CoReMHA: every token updates the outputs of all L window positions (retroactively).
class RetroactiveMultiheadAttention : public ContinualMultiheadAttention {
 public:
  // See ContinualMhaOptions; batch_first defaults to false (as upstream). Throws Error on
  // E % H != 0, L < 1, embed_dim_second without batch_first, or a bad state_dict.
  RetroactiveMultiheadAttention(const ContinualMhaOptions& options, const StateDict& state_dict);
  int64_t delay() const override { return L_ - 1; }
  // The windows' definition: x (B, T, E) -> (B, max(T - L + 1, 0), L, E), entry t =
  // forward(x[:, t : t+L]) (every position of window t). Throws Error on a shape mismatch.
  Tensor window_reference(const Tensor& x) const;
  // Stream definition: window_reference's newest position, (B, max(T - L + 1, 0), E).
  Tensor stream_reference(const Tensor& x, const StreamOptions& options) const override;
  // Stream::push((B, C, E)) returns (B, C_out, E), as every stream: for every pushed token whose
  // index since open/reset() is >= L-1, the output at the newest window position; the whole
  // updated windows (B, C_out, L, E) of the same push are the typed extra output
  // window_outputs(stream). Rows restarted by reset_row give zeros until their window is full
  // again. Per token: 6E² + O(L·H·E), numerically stable; the state is the Q/K/V windows
  // (3 x 2·L·E floats: doubled rings, so each window is contiguous) and the accumulators
  // (L·H·(E + 3) floats) per batch row.
  // The extra output of a stream opened from this layer. Throws Error when stream is another kind.
  static Tensor window_outputs(const Stream& stream);

 private:
  std::unique_ptr<detail::ContinualStreamImpl> make_stream(int64_t batch) const override;
};

}  // namespace tokenmix
