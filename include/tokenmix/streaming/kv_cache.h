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
  // left_context 0 keeps every token. Throws Error on a bad argument.
  KvCache(int64_t batch, int64_t heads, int64_t head_dim, int64_t left_context);

  // Appends C tokens to row b: key t (E floats, heads side by side) at k + t*ld, value t at v + t*ld.
  void append(int64_t b, const float* k, const float* v, int64_t C, int64_t ld);
  // Tokens currently held by row b.
  int64_t length(int64_t b) const { return len_[b]; }
  // Row b's held keys / values as attention() views (batch_stride 0): time_stride head_dim,
  // head_stride capacity*head_dim. Valid until the next append/restore on row b.
  HeadsView keys(int64_t b) const { return view(k_[b], b); }
  HeadsView values(int64_t b) const { return view(v_[b], b); }
  // Tokens seen by row b since its last reset.
  int64_t position(int64_t b) const { return pos_[b]; }
  int64_t width() const { return heads_ * head_dim_; }
  int64_t batch() const { return static_cast<int64_t>(len_.size()); }

  void reset();
  // Throws Error unless 0 <= b < batch().
  void reset_row(int64_t b);
  // State tensors under prefix: "<prefix>key.<b>", "<prefix>value.<b>" (held tokens x width, heads
  // side by side) and "<prefix>position" / "<prefix>length" (I64, per row).
  void save(SafetensorsWriter& w, const std::string& prefix) const;
  // Throws Error naming the file and tensor when it is missing or does not fit this cache.
  void restore(const SafetensorsFile& f, const std::string& prefix);

 private:
  int64_t heads_, head_dim_, left_context_;
  std::vector<std::vector<float>> k_, v_;  // per row: heads x cap_[b] x head_dim
  std::vector<int64_t> cap_, start_, len_, pos_;
  void make_room(int64_t b, int64_t C);
  HeadsView view(const std::vector<float>& buf, int64_t b) const {
    return HeadsView{buf.data() + start_[b] * head_dim_, 0, head_dim_, cap_[b] * head_dim_};
  }
  // Copies row b's held tokens into (len, E) rows (heads side by side).
  Tensor gather(const std::vector<float>& buf, int64_t b) const;
};

}  // namespace tokenmix
