// tokenmix/streaming/kv_cache.h: per-stream key/value cache for causal self-attention.
//
// Holds, per batch row, the projected keys and values of the tokens seen so far (all of them, or the
// last left_context - 1 plus the newest chunk). Storage is per head: row b keeps, for each head h, a
// (capacity, head_dim) block of keys (and one of values) in time order, so decoding one token reads
// every head's keys as one contiguous stream (the layout is what makes the decode step run at
// memory speed: a (T, E) layout makes each head skip E - head_dim floats per key). When a row's
// blocks are full the still-needed tail is moved to the front (amortised O(1) per token). Rows have
// independent lengths, so one row can be reset while the others go on.
//
// Allocation: buffers grow only when a chunk longer than any before arrives (or, with unlimited
// context, when the history outgrows the buffer: capacity doubles). With a left_context limit and a
// fixed chunk size, append() allocates nothing after the first chunk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenmix/io/safetensors.h"
#include "tokenmix/kernels/attention.h"

namespace tokenmix {

class KvCache {
 public:
  // batch >= 1 rows of heads >= 1 heads of head_dim >= 1 features (width E = heads * head_dim);
  // left_context 0 keeps every token, else 1 <= left_context <= limits::kMaxTokens. Throws Error on a
  // bad argument.
  //
  // Memory: an unlimited cache (left_context 0) grows by 2·E floats per token and row (keys and
  // values; 4 KiB per token at E = 512), and by up to twice that transiently when its buffer
  // doubles, without bound. A left_context limit bounds it to about 4·E·(left_context - 1 + C)
  // floats per row for chunks of C tokens.
  KvCache(int64_t batch, int64_t heads, int64_t head_dim, int64_t left_context);

  // Appends C tokens to row b: key t (E floats, heads side by side) at k + t*ld, value t at v + t*ld.
  void append(int64_t b, const float* k, const float* v, int64_t C, int64_t ld);
  // Tokens currently held by row b.
  int64_t length(int64_t b) const { return len_[b]; }
  // Row b's held keys / values as attention() views (batch_stride 0): time_stride head_dim,
  // head_stride capacity*head_dim. Valid until the next append/restore on row b.
  HeadsView keys(int64_t b) const { return view(k_[b], b); }
  HeadsView values(int64_t b) const { return view(v_[b], b); }
  int64_t width() const { return heads_ * head_dim_; }
  int64_t batch() const { return static_cast<int64_t>(len_.size()); }

  void reset();
  // Throws Error unless 0 <= b < batch().
  void reset_row(int64_t b);
  // State tensors under prefix: "<prefix>key.<b>", "<prefix>value.<b>" (the tokens a later query
  // can see x width, heads side by side) and "<prefix>length" (I64, those token counts per row).
  void save(SafetensorsWriter& w, const std::string& prefix) const;
  // A cache of this one's geometry holding the state saved under prefix (of a longer history only
  // the last left_context - 1 tokens are kept); this cache is left unchanged. Throws Error naming
  // the file and tensor when a tensor is missing or does not fit, or a length is outside
  // [0, limits::kMaxStreamTokens].
  KvCache restored(const SafetensorsFile& f, const std::string& prefix) const;

 private:
  int64_t heads_, head_dim_, left_context_;
  std::vector<std::vector<float>> k_, v_;  // per row: heads x cap_[b] x head_dim
  std::vector<int64_t> cap_, start_, len_;
  void make_room(int64_t b, int64_t C);
  HeadsView view(const std::vector<float>& buf, int64_t b) const {
    return HeadsView{buf.data() + start_[b] * head_dim_, 0, head_dim_, cap_[b] * head_dim_};
  }
  // Tokens of row b a later query can see: all held ones, or the last left_context - 1.
  int64_t visible(int64_t b) const;
  // Copies row b's newest n held tokens into (n, E) rows (heads side by side).
  Tensor gather(const std::vector<float>& buf, int64_t b, int64_t n) const;
};

}  // namespace tokenmix
