// tokenmix/layers/espnet_mha.h: ESPnet multi-head attention (state-spaces variant), exactly as
// espnet2.asr.state_spaces.attention.MultiHeadedAttention, plus a real KV cache and cached
// cross-attention memory.
//
// Source: Vaswani et al., "Attention Is All You Need" (NeurIPS 2017); upstream module
// espnet2/asr/state_spaces/attention.py @ 452c7e0d (ESPnet). Spec: tests/data/reference/espnet_mha/SPEC.md.
//
// Math (B batch, T1 query length, T2 memory length, E = n_feat, H = n_head, D = head_dim = E / H):
//   Q = query·W_qᵀ + b_q, K = memory·W_kᵀ + b_k, V = memory·W_vᵀ + b_v   (split into H heads of D)
//   P = softmax((Q_h·K_hᵀ) / sqrt(D)) over T2, masked keys get probability exactly 0
//   out = concat_h(P_h·V_h)·W_oᵀ + b_o                                   (B, T1, E)
// Mask convention (upstream): True = keep (may attend). A query row whose keys are all masked gets
// attn = 0 and out = linear_out.bias (never NaN), as upstream.
#pragma once

#include <memory>

#include "tokenmix/core/tensor.h"
#include "tokenmix/core/workspace.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/streaming/causal_attention_stream.h"

namespace tokenmix {

// Constructor arguments of the upstream module (same names and defaults).
struct EspnetMhaOptions {
  int64_t n_feat = 0;        // E, 1 <= E <= 2^16
  int64_t n_head = 0;        // H >= 1 with E % H == 0
  double dropout = 0.0;      // 0 <= p <= 1; accepted, never applied (inference)
  bool transposed = false;   // accepted and ignored, as upstream (SPEC section 2)
  LinearOptions linear;  // precision and GEMM backend of the projections (ours, not an upstream argument)
  // Throws Error "EspnetMultiHeadedAttention: <option>: expected ..., got ..." for the first bad one.
  void validate() const;
};

class EspnetMultiHeadedAttention : public Layer, private CausalAttentionCore {
 public:
  // n_feat = E >= 1, n_head = H >= 1 with E % H == 0; throws Error otherwise. Loads the upstream
  // state_dict keys linear_{q,k,v,out}.{weight (E, E), bias (E)}; throws Error listing missing,
  // unexpected and mis-shaped keys.
  EspnetMultiHeadedAttention(const EspnetMhaOptions& options, const StateDict& state_dict);
  EspnetMultiHeadedAttention(int64_t n_feat, int64_t n_head, const StateDict& state_dict)
      : EspnetMultiHeadedAttention(EspnetMhaOptions{n_feat, n_head, 0.0, false, {}}, state_dict) {}

  std::string name() const override { return "espnet_mha"; }
  int64_t d_model() const override { return n_feat_; }
  int64_t heads() const { return n_head_; }
  int64_t head_dim() const { return head_dim_; }

  // Upstream forward(query, memory, mask).
  //   query:  (B, T1, E), or (B, E) read as T1 = 1 (as upstream's head split does)
  //   memory: (B, T2, E) or (B, E) (T2 = 1), or empty for self-attention (memory = query)
  //   mask:   (B, 1, T2) key padding or (B, T1, T2) per query row, True = keep; or empty.
  //           2-D masks are rejected (upstream silently mis-broadcasts them when B == H).
  //   attn:   when non-null, receives the probabilities (B, H, T1, T2).
  // Returns (B, T1, E) ((B, 1, E) for a 2-D query). Throws Error on any shape mismatch.
  Tensor forward(const Tensor& query, const Tensor& memory, const Mask& mask, Tensor* attn) const;

  // Unified API: self-attention with key_padding_mask (B, T), True = padded (ignored).
  Tensor forward(const Tensor& x, const Mask& key_padding_mask = {}) const override;

  // Upstream step(query, state, memory, mask): stateless, exactly forward(query, memory, mask) with
  // a (B, E) query read as T1 = 1 and the time axis squeezed. query: (B, E) or (B, T1, E); returns
  // (B, E) for (B, E) and (B, 1, E) queries, else (B, T1, E). Re-projects memory at every call: for
  // decoding use open_stream() (self-attention) or project_memory() + step() (cross-attention).
  Tensor step(const Tensor& query, const Tensor& memory, const Mask& mask, Tensor* attn = nullptr) const;

  // Cross-attention memory projected once per utterance: K and V (B, T2, E) plus the mask.
  struct ProjectedMemory {
    Tensor key;    // (B, T2, E) = memory·W_kᵀ + b_k
    Tensor value;  // (B, T2, E) = memory·W_vᵀ + b_v
    Mask mask;     // (B, 1, T2) or (B, T1, T2) True = keep, or empty
  };
  // memory: (B, T2, E); mask as in forward(). Throws Error on a shape mismatch.
  ProjectedMemory project_memory(const Tensor& memory, const Mask& mask = {}) const;
  // Cross-attention of query tokens against pre-projected memory: same result as
  // step(query, memory, mask) (to float rounding) at O(T1·T2·E + T1·E²) instead of O(T2·E²) more.
  // query: (B, E) or (B, T1, E). A (B, T1, T2) mask needs T1 to match the query.
  Tensor step(const Tensor& query, const ProjectedMemory& memory, Tensor* attn = nullptr) const;

  // Causal self-attention reference: forward(x, mask = causal band of options.left_context).
  Tensor stream_reference(const Tensor& x, const StreamOptions& options) const override;
  // Causal self-attention with a KV cache: each pushed token is projected once; a new token costs
  // O(t·E + E²) for t cached tokens. options.left_context limits the cache (0 = unlimited).
  StreamOptionSpec stream_options_accepted() const override { return {true, false, 0}; }
  std::unique_ptr<Stream> open_stream(int64_t batch, const StreamOptions& options = {}) const override;
  const Linear& projection() const override { return out_; }
  int64_t weight_bytes() const override {
    return q_.weight_bytes() + k_.weight_bytes() + v_.weight_bytes() + out_.weight_bytes();
  }


 private:
  int64_t n_feat_, n_head_, head_dim_;
  Linear q_, k_, v_;  // linear_q, linear_k, linear_v: (E, E), (E) each
  Linear out_;        // linear_out: (E, E), (E)
  mutable WorkspacePool pool_;  // forward()'s and step()'s scratch, one workspace per concurrent call
  // The upstream keep mask (B or 1, T1 or 1, T2), True = keep, as the kernel's mask (a view).
  // Throws Error "<fn>: mask: ..." on another shape.
  static AttentionMask keep_view(const Mask& mask, int64_t B, int64_t T1, int64_t T2, const char* fn);
  // Projections of query (B, T, E) and memory (B, T2, E; empty = self-attention), attention with
  // mask (or none), output projection.
  Tensor project_attend(const Tensor& query, const Tensor& memory, const AttentionMask* mask, Tensor* attn) const;
  // Attention of projected q rows (B, T1) over projected k, v rows (B, T2) of E floats at the given
  // views, then the output projection. The context goes to buffer 3 of ws (the caller's workspace,
  // whose buffers 0-2 hold the projections).
  Tensor attend(HeadsView q, HeadsView k, HeadsView v, int64_t B, int64_t T1, int64_t T2, const AttentionMask* mask,
                Tensor* attn, Workspace& ws) const;
  // CausalAttentionCore
  int64_t attention_width() const override { return n_feat_; }
  int64_t attention_heads() const override { return n_head_; }
  void project_qkv(const float* x, int64_t rows, float* q, float* k, float* v) const override;
  void project_out(const float* ctx, int64_t rows, float* out) const override;
  bool bf16_products() const override { return reduced_precision(); }
};

}  // namespace tokenmix
