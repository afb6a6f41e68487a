// tokenmix/layers/primer_ez.h: labml.ai multi-head attention and the Primer-EZ family
// (Multi-DConv-Head Attention and its variants, the causal depth-wise convolutions, squared ReLU).
//
// Source: So et al., "Primer: Searching for Efficient Transformers for Language Modeling" (arXiv
// 2109.08668, NeurIPS 2021); Vaswani et al., "Attention Is All You Need" (NeurIPS 2017). Upstream
// modules (labmlai/annotated_deep_learning_paper_implementations @ e6b3c8a6):
//   labml_nn.transformers.mha.MultiHeadAttention                                  QkvConv::kNone
//   labml_nn.transformers.primer_ez.MultiDConvHeadAttention                       QkvConv::kPerChannel
//   labml_nn.transformers.primer_ez.variations.MultiDSharedConvHeadAttention      QkvConv::kShared
//   labml_nn.transformers.primer_ez.variations.MultiDPHConvHeadAttention          QkvConv::kPerHead
//   labml_nn.transformers.primer_ez.efficient.MultiDConvHeadAttention             QkvConv::kEfficient
//   labml_nn.transformers.primer_ez[.variations|.efficient].SpatialDepthWise*Convolution, SquaredReLU
// Spec: tests/data/reference/primer_ez/SPEC.md.
//
// Math (S query length, S_k key length, B batch, D = d_model, H = heads, d_k = D / H):
//   q = conv_q(query·W_qᵀ + b_q), k = conv_k(key·W_kᵀ + b_k), v = conv_v(value·W_vᵀ + b_v)
//       (conv = identity for plain MHA; split into H heads of d_k: head h = features h·d_k .. h·d_k+d_k-1)
//   attn[i, j, b, h] = softmax_j((q[i,b,h]·k[j,b,h]) / sqrt(d_k)), masked keys get probability 0
//   out[i, b] = concat_h(Σ_j attn[i,j,b,h]·v[j,b,h])·W_oᵀ + b_o                     [S, B, D]
// Causal depth-wise convolution (kernel size K, 3 in every attention class), per channel f of the
// projected features, along time, zero history before t = 0, bias added at every step:
//   conv(x)[t, b, f] = bias[f] + Σ_{i<K} tap[i][f]·x[t − i, b, f]
// where tap[i] multiplies the step i positions back. Upstream's Conv1d modules store it reversed
// (conv.weight[c, 0, K−1−i]); the efficient module stores kernels[i, c] = tap[i] and has no bias.
// Kernel sharing (one implementation, CausalDepthwiseConv, with the layout as a parameter):
//   kPerChannel: one kernel per channel c < d_k, shared by all heads     conv.weight (d_k, 1, K), conv.bias (d_k)
//   kShared:     one kernel and one scalar bias for every channel        conv.weight (1, 1, K),   conv.bias (1)
//   kPerHead:    one kernel per (head, channel), index h·d_k + c         conv.weight (H·d_k, 1, K), conv.bias (H·d_k)
//   kEfficient:  one kernel per channel c < d_k, shared by heads, no bias kernels (K, d_k)
// The convolution is causal whatever the attention mask says and sees padded steps too (a left-padded
// batch leaks pad projections into the first K−1 real steps, as upstream).
//
// Deliberate deviation: a query row whose keys are ALL masked gives NaN upstream (softmax of -inf);
// tokenmix gives attention probability 0 and context 0 there, so that row's output is output.bias
// (the shared attention kernel's behaviour). The reference cases avoid such rows.
//
// Layouts: the upstream API (forward(query, key, value, mask)) is sequence-first [S, B, D] with masks
// [S or 1, S_k, B or 1], True = may attend. The unified Layer API is batch-first (B, T, E) with a
// key_padding_mask (B, T), True = padded. Both run the same code with different strides (the
// attention kernel reads time-major or batch-major heads in place; no transposes are made).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenmix/core/tensor.h"
#include "tokenmix/core/workspace.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/streaming/causal_attention_stream.h"

namespace tokenmix {

// The convolution after each of the q/k/v projections (kNone: plain multi-head attention).
enum class QkvConv { kNone, kPerChannel, kShared, kPerHead, kEfficient };

// "none", "per_channel", "shared", "per_head", "efficient".
const char* qkv_conv_name(QkvConv layout);

// The causal depth-wise convolution along time shared by every Primer-EZ module, with its weights
// expanded to `width` channels (width a multiple of the layout's distinct-channel count P: d_k, 1,
// heads·d_k or d_k). Immutable after construction.
class CausalDepthwiseConv {
 public:
  // Reads the upstream parameters of one convolution module from r under prefix:
  //   kPerChannel / kShared / kPerHead: prefix + "conv.weight" (P, 1, K) and prefix + "conv.bias" (P)
  //   kEfficient:                       prefix + "kernels" (K, P)
  // with P = d_k, 1, heads·d_k, d_k. Missing or mis-shaped keys are reported by r.finish().
  // Throws Error "<fn>: ..." when layout is kNone, kernel_size < 2 (Conv1d layouts; upstream crops
  // every output for 1) or < 1 (efficient), d_k / heads < 1 where the layout needs them, or width is
  // not a positive multiple of P.
  CausalDepthwiseConv(WeightReader& r, const std::string& prefix, QkvConv layout, int64_t heads,
                      int64_t d_k, int64_t kernel_size, int64_t width, const char* fn);

  QkvConv layout() const { return layout_; }
  int64_t kernel_size() const { return K_; }
  int64_t width() const { return W_; }
  int64_t weight_bytes() const { return static_cast<int64_t>((taps_.size() + bias_.size()) * sizeof(float)); }

  // In place: B sequences of T steps of `channels` features (channels a multiple of width()); step t
  // of sequence b starts at x + b*batch_stride + t*time_stride. history, when non-null, holds for
  // each sequence the K−1 raw inputs before t = 0, oldest first, as (K−1, channels) rows at
  // history + b*history_batch_stride; null means zeros. No checks (callers validate shapes).
  void apply(float* x, int64_t T, int64_t B, int64_t time_stride, int64_t batch_stride, int64_t channels,
             const float* history = nullptr, int64_t history_batch_stride = 0) const;

  // One streamed chunk of one sequence: x (C, width()) contiguous, in place, continuing from history
  // (K−1, width()), which is then advanced to the last K−1 raw inputs. scratch holds (K−1)·width().
  void stream(float* x, int64_t C, float* history, float* scratch) const;

 private:
  QkvConv layout_;
  int64_t K_, W_;
  std::vector<float> taps_;  // (K, W): taps_[i*W + f] multiplies x[t − i] at channel f
  std::vector<float> bias_;  // (W), zeros for kEfficient
};

// Stand-alone upstream convolution modules on a projection output x [S, B, H, d_k]:
//   kPerChannel: primer_ez.SpatialDepthWiseConvolution(d_k, kernel_size)
//   kShared:     primer_ez.variations.SpatialDepthWiseSharedConvolution(kernel_size) (heads, d_k ignored)
//   kPerHead:    primer_ez.variations.SpatialDepthWisePerHeadConvolution(heads, d_k, kernel_size)
//   kEfficient:  primer_ez.efficient.SpatialDepthWiseConvolution(d_k, kernel_size)
// state_dict keys as in CausalDepthwiseConv with an empty prefix ("conv.weight", "conv.bias" or
// "kernels"). Throws Error on bad arguments or missing/unexpected/mis-shaped keys.
class SpatialDepthWiseConvolution {
 public:
  SpatialDepthWiseConvolution(QkvConv layout, int64_t heads, int64_t d_k, int64_t kernel_size,
                              const StateDict& state_dict);
  // x: [S, B, H, d_k] (H = heads for kPerHead; d_k fixed except for kShared). Returns [S, B, H, d_k].
  // Throws Error "SpatialDepthWiseConvolution::forward: x: expected ..." on a shape mismatch.
  Tensor forward(const Tensor& x) const;

 private:
  int64_t heads_, d_k_;
  std::unique_ptr<CausalDepthwiseConv> conv_;
};

// primer_ez.SquaredReLU: y = relu(x)², element-wise, any shape.
Tensor squared_relu(const Tensor& x);

// Constructor arguments of labml's MultiHeadAttention / the Primer-EZ classes (same names and
// defaults), plus which class: conv = kNone for MultiHeadAttention, else the q/k/v convolution.
struct LabmlMhaOptions {
  int64_t heads = 0;          // H >= 1 with D % H == 0
  int64_t d_model = 0;        // D, 1 <= D <= 2^16
  double dropout_prob = 0.1;  // 0 <= p <= 1; identity at inference
  bool bias = true;           // MultiHeadAttention only (query/key biases); true for the Primer classes
  QkvConv conv = QkvConv::kNone;
  LinearOptions linear;  // precision and GEMM backend of the projections (ours, not an upstream argument)
  // Throws Error "LabmlMultiHeadAttention: <option>: expected ..., got ..." for the first bad one.
  void validate() const;
};

// labml MultiHeadAttention (conv = kNone) and the Primer-EZ multi-DConv-head attention classes.
class LabmlMultiHeadAttention : public Layer, private CausalAttentionCore {
 public:
  // heads = H >= 1, d_model = D >= 1 with D % H == 0 (upstream crashes in forward otherwise).
  // bias: upstream MultiHeadAttention's `bias` argument; it only removes the query and key projection
  // biases (value and output are always biased). The Primer classes have no bias argument: bias must
  // be true with conv != kNone. state_dict keys (X in query, key, value):
  //   kNone:   X.linear.weight (D, D), X.linear.bias (D) (query/key only when bias), output.weight
  //            (D, D), output.bias (D)
  //   others:  X.0.linear.weight (D, D), X.0.linear.bias (D), X.1.<conv keys> (see
  //            CausalDepthwiseConv, kernel size 3), output.weight (D, D), output.bias (D)
  // Throws Error on bad arguments or listing missing, unexpected and mis-shaped keys.
  LabmlMultiHeadAttention(const LabmlMhaOptions& options, const StateDict& state_dict);
  LabmlMultiHeadAttention(QkvConv conv, int64_t heads, int64_t d_model, const StateDict& state_dict,
                          bool bias = true)
      : LabmlMultiHeadAttention(LabmlMhaOptions{heads, d_model, 0.1, bias, conv, {}}, state_dict) {}

  std::string name() const override { return "primer_ez"; }
  int64_t d_model() const override { return d_model_; }
  int64_t heads() const { return heads_; }
  int64_t d_k() const { return d_k_; }
  QkvConv conv() const { return conv_; }

  // Upstream forward(query=, key=, value=, mask=), sequence-first.
  //   query: [S, B, D];  key, value: [S_k, B, D]
  //   mask:  [S or 1, S_k, B or 1], non-zero = query i may attend key j; or empty (no mask)
  //   attn:  when non-null, receives upstream's `attn` attribute, the probabilities [S, S_k, B, H]
  // Returns [S, B, D]. Throws Error "LabmlMultiHeadAttention::forward: <arg>: expected ..., got ..."
  // on any shape mismatch.
  Tensor forward(const Tensor& query, const Tensor& key, const Tensor& value, const Mask& mask,
                 Tensor* attn = nullptr) const;

  // The output of upstream's query / key / value sub-module: projection, then (Primer classes) the
  // causal convolution. x: [S, B, D]; returns [S, B, H, d_k]. Throws Error on a shape mismatch.
  enum class Projection { kQuery, kKey, kValue };
  Tensor project(Projection which, const Tensor& x) const;

  // Unified API: self-attention, x (B, T, E), key_padding_mask (B, T) True = padded (ignored as key),
  // or empty. Returns (B, T, E). The convolutions run over every step, padded ones included.
  Tensor forward(const Tensor& x, const Mask& key_padding_mask = {}) const override;
  // Causal self-attention: forward(x) with the causal band of options.left_context (0 = unlimited).
  // x: (B, T, E); returns (B, T, E). Throws Error when left_context < 0.
  Tensor stream_reference(const Tensor& x, const StreamOptions& options) const override;
  // KV-cache stream; the Primer classes also keep, per row, the last 2 projected q/k/v rows (the
  // causal conv history), saved/restored with the stream and cleared by reset_row. Equals
  // stream_reference for any chunking. Throws Error when batch < 1 or left_context < 0.
  StreamOptionSpec stream_options_accepted() const override { return {true, false, 0}; }
  std::unique_ptr<Stream> open_stream(int64_t batch, const StreamOptions& options = {}) const override;
  const Linear& projection() const override { return out_; }
  int64_t weight_bytes() const override;

  // The convolution after projection `which` (null for kNone); used by the stream.
  const CausalDepthwiseConv* qkv_conv(Projection which) const { return convs_[static_cast<int>(which)].get(); }

 private:
  QkvConv conv_;
  int64_t heads_, d_model_, d_k_;
  // query, key, value projections: (D, D), (D) (the query and key bias empty when bias = false)
  Linear qkv_[3];
  Linear out_;  // output: (D, D), (D)
  mutable WorkspacePool pool_;  // forward()'s scratch, one workspace per concurrent call
  std::unique_ptr<CausalDepthwiseConv> convs_[3];  // q, k, v convolutions (width D), or null

  // Rows of D floats for B sequences of T steps: step t of sequence b is row b*bs + t*ts (in rows).
  struct SeqLayout {
    int64_t B, T, bs, ts;
  };
  // Projection `which` of x (B*T rows of D, laid out as l) into y (same layout), conv applied along
  // time.
  void project_rows(int which, const Tensor& x, const SeqLayout& l, float* y) const;
  // Attention of q (layout ql) over k, v (layout kl), then the output projection; result in ql's
  // layout. probs (B, H, S, S_k) when non-null. The context goes to buffer 3 of ws (the caller's
  // workspace, whose buffers 0-2 hold q, k, v).
  Tensor attend(const float* q, const SeqLayout& ql, const float* k, const float* v, const SeqLayout& kl,
                const AttentionMask* mask, bool causal, int64_t left_context, float* probs, Workspace& ws) const;
  // Offline self-attention in the unified (B, T, E) layout.
  Tensor self_attention(const Tensor& x, const AttentionMask* mask, bool causal,
                        int64_t left_context, const char* fn) const;
  // CausalAttentionCore
  int64_t attention_width() const override { return d_model_; }
  int64_t attention_heads() const override { return heads_; }
  void project_qkv(const float* x, int64_t rows, float* q, float* k, float* v) const override;
  void project_out(const float* ctx, int64_t rows, float* out) const override;
  bool bf16_products() const override { return reduced_precision(); }
};

}  // namespace tokenmix
