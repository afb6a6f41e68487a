// tokenmix/kernels/attention.h: scaled dot-product multi-head attention over strided head views.
//
// One kernel serves every attention layer (ESPnet MHA, labml MHA and Primer-EZ, continual attention,
// the KV-cache streams): projections stay in their natural (B, T, E) or time-major (T, B, E) buffers,
// and a HeadsView says where row (b, t) of head h lives, so no transposes are made.
//
// Semantics, for each batch b, head h, query i:
//   s_j  = scale * (q_i · k_j)                      for every key j
//   keep_j = mask allows (b, i, j)  and  causal/left-context band allows (i, j)
//   p_j  = softmax over kept j of s_j, and exactly 0 for masked j
//   ctx_i = Σ_j p_j v_j
// A query row with no kept key gets p = 0 and ctx = 0 (ESPnet's fill-with-float-min-then-zero gives
// exactly this; PyTorch's -inf fill gives NaN there, tokenmix deliberately returns 0 instead).
#pragma once

#include <cstdint>

namespace tokenmix {

// Row (b, t) of head h starts at data + b*batch_stride + t*time_stride + h*head_stride, where
// head_stride 0 means head_dim (heads side by side in a row of E = heads*head_dim floats, the
// (B, T, E) layout of a projection). A per-head layout (H, T, head_dim), as the KV cache keeps, has
// time_stride head_dim and head_stride T*head_dim.
struct HeadsView {
  const float* data = nullptr;
  int64_t batch_stride = 0;
  int64_t time_stride = 0;
  int64_t head_stride = 0;
};
// Output rows: (b, t) of head h at data + b*batch_stride + t*time_stride + h*head_dim.
struct HeadsOut {
  float* data = nullptr;
  int64_t batch_stride = 0;
  int64_t time_stride = 0;
};

// A boolean mask addressed as data[b*batch_stride + i*query_stride + j*key_stride] (stride 0
// broadcasts an axis). keep_value is the byte value that means "may attend" (1 for ESPnet and
// labml, 0 for PyTorch's key_padding_mask where True = ignore).
struct AttentionMask {
  const uint8_t* data = nullptr;
  int64_t batch_stride = 0;
  int64_t query_stride = 0;
  int64_t key_stride = 1;
  uint8_t keep_value = 1;
};

struct AttentionShape {
  int64_t batch = 0, heads = 0, head_dim = 0;
  int64_t q_len = 0, k_len = 0;
  float scale = 1.f;
  // Causal band: query i sits at key position i + query_offset and may attend key j only when
  // j <= i + query_offset and (left_context == 0 or i + query_offset - j < left_context).
  bool causal = false;
  int64_t query_offset = 0;
  int64_t left_context = 0;
  // Reduced precision of the flash path: Q·Kᵀ and P·V with Q, K, V and the probabilities rounded to
  // bf16 (nearest even) and fp32 accumulation, where the CPU has AVX512-BF16 (kernel set
  // avx512_bf16) and head_dim % 16 == 0; the fp32 products otherwise. The softmax, the masks and the
  // context stay fp32; with bf16 products the softmax runs in base 2 on log2(e)-scaled scores with an
  // exp2 good to 1e-4 relative (the probabilities are rounded to bf16, 2^-9, next). Layers set it
  // when their projections run in bf16 (kernels/precision.h), so the layer's bf16 parity gate covers
  // both. Ignored with probs and on the decode path (fp32).
  bool bf16_products = false;

  // batch x heads of head_dim, q_len queries over k_len keys, scores scaled by 1 / sqrt(head_dim),
  // no band.
  static AttentionShape scaled(int64_t batch, int64_t heads, int64_t head_dim, int64_t q_len, int64_t k_len);
  // This shape with the causal band of query_offset and left_context (0 = unlimited).
  AttentionShape with_causal_band(int64_t query_offset, int64_t left_context) const;
};

// The optimized kernel, OpenMP over batch x heads x query tiles. Without probs: flash attention
// (key blocks under an online softmax; per thread O(k_len x head_dim) extra floats for the packed
// keys and values, never q_len x k_len), on register tiles when the kernel set is avx2 or better and
// head_dim % 8 == 0 (bf16 operands on AVX512-BF16 when s.bf16_products), on OpenBLAS GEMMs otherwise; fewer than 4 queries (decoding over a KV cache) take a per-row path.
// With probs: GEMM, exact two-pass softmax, GEMM over 64-row tiles; probs receives the
// probabilities as a dense (B, H, q_len, k_len) array. mask may be null. Unchecked (the layers
// validate shapes); results match attention_reference() to float rounding.
void attention(const AttentionShape& s, HeadsView q, HeadsView k, HeadsView v,
               const AttentionMask* mask, HeadsOut ctx, float* probs = nullptr);

// Pre-grows every OpenMP thread's scratch so later attention() calls with at most q_len queries,
// k_len keys and this head_dim allocate nothing (the KV-cache streams call it when a new chunk size
// appears).
void attention_reserve(int64_t q_len, int64_t k_len, int64_t head_dim);

// Single-query kernels (decoding over a KV cache, the continual retroactive stream): one query of
// one head against n keys or values whose rows sit at stride ld floats (one head's columns inside a
// (T, E) buffer: point at column h*head_dim and pass ld = E). Unchecked raw-pointer kernels (the
// callers validate shapes): D % 8 == 0 takes the AVX2 path (kernel set avx2 or better), any other D the plain loops.
//
// attention_scores: out[j] = scale * (q · K_j) for j < n; q (D), K (n rows of D at stride ld), out (n).
void attention_scores(const float* q, const float* K, int64_t n, int64_t ld, int64_t D, float scale, float* out);

// The unnormalised softmax context of one query from its n scores s (overwritten):
//   m = max_j s_j,  s_j <- exp(s_j - m),  c (D) = Σ_j s_j · V_j,  returns d = Σ_j exp(s_j - m)
// and stores m in *max, so the attention output is c / d (the form a running softmax keeps). A score
// of -inf is a masked key (weight exactly 0); when all n are masked (or n = 0) it returns 0 with
// *max = -inf and c = 0.
float attention_context_unnormalized(float* s, int64_t n, const float* V, int64_t ld, int64_t D, float* c,
                                     float* max);

// The obviously-correct reference: plain loops, double accumulation. Same contract as attention().
void attention_reference(const AttentionShape& s, HeadsView q, HeadsView k, HeadsView v,
                         const AttentionMask* mask, HeadsOut ctx, float* probs = nullptr);

}  // namespace tokenmix
