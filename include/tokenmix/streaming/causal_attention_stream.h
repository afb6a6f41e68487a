// tokenmix/streaming/causal_attention_stream.h: the KV-cache stream shared by every causal
// self-attention layer (ESPnet MHA, labml MHA, the Primer-EZ multi-DConv-head variants).
//
// A layer supplies its projections through CausalAttentionCore; the stream owns the KV cache and
// all scratch buffers. push((B, C, E)) projects the C new tokens once, appends their K/V to the cache
// and attends each new query over the cached keys with the causal (left-context) band, so a token costs
// O(t·E + E²) and streamed outputs equal the offline causal forward.
#pragma once

#include <string>
#include <vector>

#include "tokenmix/streaming/kv_cache.h"
#include "tokenmix/streaming/stream.h"

namespace tokenmix {

// Implemented by each causal attention layer. All buffers are contiguous rows of E floats.
class CausalAttentionCore {
 public:
  virtual ~CausalAttentionCore() = default;
  virtual int64_t attention_width() const = 0;  // E
  virtual int64_t attention_heads() const = 0;  // H (head_dim = E / H)
  // x (rows, E) -> q, k, v (rows, E) (q unscaled), three buffers of the stream's.
  virtual void project_qkv(const float* x, int64_t rows, float* q, float* k, float* v) const = 0;
  // ctx (rows, E) -> out (rows, E).
  virtual void project_out(const float* ctx, int64_t rows, float* out) const = 0;
  // AttentionShape::bf16_products for this layer's attention (its projections run in bf16 or int8).
  virtual bool bf16_products() const = 0;
};

class CausalAttentionStream : public Stream {
 public:
  // name prefixes error messages ("<name>::push: ..."); core must outlive the stream.
  CausalAttentionStream(std::string name, const CausalAttentionCore& core, int64_t batch,
                        const StreamOptions& options);
  Shape output_shape(int64_t chunk) const override { return Shape{batch_, chunk, width_}; }
  int64_t delay() const override { return 0; }
  void reset() override;
  void reset_row(int64_t b) override;

 protected:
  Tensor push_chunk(const Tensor& chunk) override;
  // State: header config (batch, E, H, left_context), the KV cache under "kv.", then save_extra.
  std::string state_name() const override { return name_; }
  std::vector<int64_t> state_config() const override { return {batch_, width_, heads_, left_context_}; }
  std::string state_config_names() const override { return "batch, E, H, left_context"; }
  void save_state(SafetensorsWriter& writer) const override;
  void restore_state(const SafetensorsFile& file) override;
  // Hook between projection and cache: row b's C new q/k/v rows (row stride E), in place. Layers
  // with per-stream history (Primer-EZ's causal convolutions) override it and the three state hooks.
  virtual void transform_qkv(int64_t b, float* q, float* k, float* v, int64_t C) {
    (void)b, (void)q, (void)k, (void)v, (void)C;
  }
  virtual void reset_extra(int64_t b) { (void)b; }
  virtual void save_extra(SafetensorsWriter& w) const { (void)w; }
  // Reads the extra state back. All or nothing: it checks everything it reads before it changes
  // anything (restore calls it after the KV cache has been read and before either is committed).
  virtual void restore_extra(const SafetensorsFile& f) { (void)f; }

  const std::string name_, push_fn_;
  const int64_t batch_, width_;

 private:
  const CausalAttentionCore& core_;
  const int64_t heads_, left_context_;
  KvCache cache_;
  std::vector<float> qkv_;        // (3, B, C, E) scratch: q, k, v blocks, grown only
  std::vector<float> ctx_, out_;  // (B, C, E) scratch, grown only
  int64_t reserved_chunk_ = 0;                // largest chunk size seen so far
};

}  // namespace tokenmix
