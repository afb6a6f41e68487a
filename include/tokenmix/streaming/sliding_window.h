// tokenmix/streaming/sliding_window.h: per-batch-row window of the last L rows of W floats.
//
// The building block of the windowed streams (Fastformer, HyperMixing, continual attention): each
// pushed row (a token's cached projections) is written twice into a 2L-row buffer, so the current
// window is always one contiguous (count, W) block, oldest first, with no copying as it slides.
// push() is O(W) and allocates nothing; all memory is allocated by the constructor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenmix/io/safetensors.h"

namespace tokenmix {

class SlidingWindow {
 public:
  // batch >= 1 rows, window length 1 <= L <= limits::kMaxTokens, row width W >= 1. Throws Error
  // otherwise or when the buffer's size overflows.
  SlidingWindow(int64_t batch, int64_t length, int64_t width);

  // Appends one row (W floats) to batch row b, evicting the oldest once L rows are held.
  void push(int64_t b, const float* row);
  // Rows currently held by batch row b (<= L) and the first (oldest) of them; rows are contiguous
  // with stride W, oldest first.
  int64_t count(int64_t b) const { return count_[b]; }
  const float* rows(int64_t b) const;
  bool full(int64_t b) const { return count_[b] == length_; }
  // Rows pushed to batch row b since its last reset.
  int64_t seen(int64_t b) const { return seen_[b]; }
  int64_t length() const { return length_; }
  int64_t width() const { return width_; }
  int64_t batch() const { return static_cast<int64_t>(count_.size()); }

  void reset();
  void reset_row(int64_t b);
  // State under prefix: "<prefix>rows.<b>" (count x W, oldest first), "<prefix>seen" (I64 per row).
  void save(SafetensorsWriter& w, const std::string& prefix) const;
  // A window of this one's (batch, L, W) holding the state saved under prefix; this window is left
  // unchanged. Throws Error naming the file and tensor when a tensor is missing or does not match
  // (batch, L, W), or a row's seen count is outside [0, limits::kMaxStreamTokens].
  SlidingWindow restored(const SafetensorsFile& f, const std::string& prefix) const;
  // Throws Error "<fn>: row b has seen N tokens; C more would pass the limit ..." when pushing C more
  // tokens to some row would take its seen count past limits::kMaxStreamTokens.
  void check_room(int64_t C, const char* fn) const;

 private:
  int64_t length_, width_;
  std::vector<float> data_;  // (batch, 2L, W)
  std::vector<int64_t> head_, count_, seen_;
};

}  // namespace tokenmix
