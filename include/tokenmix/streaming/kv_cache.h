// tokenmix/streaming/kv_cache.h: per-stream key/value cache for causal self-attention.
//
// Holds, per batch row, the projected keys and values of the tokens seen so far (all of them, or the
// last left_context - 1 plus the newest chunk). Keys stay contiguous and in time order: when a row's
// buffer is full the still-needed tail is moved to the front (amortised O(1) per token), so the
// attention kernel reads them as a plain (T, E) block. Rows have independent lengths, so one row can
// be reset while the others go on.
//
// Allocation: buffers grow only when a chunk longer than any before arrives (or, with unlimited
// context, when the history outgrows the buffer: capacity doubles). With a left_context limit and a
// fixed chunk size, append() allocates nothing after the first chunk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenmix/io/safetensors.h"

namespace tokenmix {

class KvCache {
 public:
  // batch >= 1 rows of width (= E) features; left_context 0 keeps every token.
  KvCache(int64_t batch, int64_t width, int64_t left_context);

  // Appends C tokens to row b: key row t at k + t*ld, value row t at v + t*ld.
  void append(int64_t b, const float* k, const float* v, int64_t C, int64_t ld);
  // Tokens currently held by row b, and the pointers to its first key / value (row stride width()).
  int64_t length(int64_t b) const { return len_[b]; }
  const float* keys(int64_t b) const { return k_[b].data() + start_[b] * width_; }
  const float* values(int64_t b) const { return v_[b].data() + start_[b] * width_; }
  // Tokens seen by row b since its last reset.
  int64_t position(int64_t b) const { return pos_[b]; }
  int64_t width() const { return width_; }
  int64_t batch() const { return static_cast<int64_t>(len_.size()); }

  void reset();
  void reset_row(int64_t b);
  // State tensors under prefix: "<prefix>key.<b>", "<prefix>value.<b>" (held tokens x width) and
  // "<prefix>position" / "<prefix>length" (I64, per row).
  void save(SafetensorsWriter& w, const std::string& prefix) const;
  // Throws Error naming the file and tensor when it is missing or does not fit this cache.
  void restore(const SafetensorsFile& f, const std::string& prefix);

 private:
  int64_t width_, left_context_;
  std::vector<std::vector<float>> k_, v_;
  std::vector<int64_t> start_, len_, pos_;
  void make_room(int64_t b, int64_t C);
};

}  // namespace tokenmix
