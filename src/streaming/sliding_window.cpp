#include "tokenmix/streaming/sliding_window.h"

#include <algorithm>
#include <cstring>

#include "tokenmix/core/checked.h"
#include "tokenmix/core/tensor.h"

namespace tokenmix {

SlidingWindow::SlidingWindow(int64_t batch, int64_t length, int64_t width)
    : length_(length), width_(width) {
  check(batch >= 1, "SlidingWindow: batch: expected >= 1, got ", batch);
  check(length >= 1, "SlidingWindow: length: expected >= 1, got ", length);
  check(width >= 1, "SlidingWindow: width: expected >= 1, got ", width);
  check_range(length, 1, limits::kMaxTokens, "SlidingWindow", "length");
  data_.assign(static_cast<size_t>(numel_checked({batch, 2, length, width}, "SlidingWindow", "buffer")), 0.f);
  head_.assign(batch, 0);
  count_.assign(batch, 0);
  seen_.assign(batch, 0);
}

void SlidingWindow::push(int64_t b, const float* row) {
  float* base = data_.data() + b * 2 * length_ * width_;
  // Slot of the new row in ring order; it is mirrored at slot + L so [head, head + count) is contiguous.
  const int64_t slot = (head_[b] + count_[b]) % length_;
  std::memcpy(base + slot * width_, row, sizeof(float) * width_);
  std::memcpy(base + (slot + length_) * width_, row, sizeof(float) * width_);
  if (count_[b] < length_)
    ++count_[b];
  else
    head_[b] = (head_[b] + 1) % length_;
  ++seen_[b];
}

const float* SlidingWindow::rows(int64_t b) const {
  return data_.data() + (b * 2 * length_ + head_[b]) * width_;
}

void SlidingWindow::reset() {
  for (int64_t b = 0; b < batch(); ++b) reset_row(b);
}

void SlidingWindow::reset_row(int64_t b) {
  check(b >= 0 && b < batch(), "SlidingWindow::reset_row: b: expected 0 <= b < ", batch(), ", got ", b);
  head_[b] = count_[b] = seen_[b] = 0;
}

void SlidingWindow::save(SafetensorsWriter& w, const std::string& prefix) const {
  w.add_int64s(prefix + "seen", seen_);
  w.add_int64s(prefix + "shape", {batch(), length_, width_});
  for (int64_t b = 0; b < batch(); ++b) {
    if (count_[b] == 0) continue;
    w.add(prefix + "rows." + std::to_string(b),
          Tensor::view(Shape{count_[b], width_}, const_cast<float*>(rows(b))));
  }
}

void SlidingWindow::check_room(int64_t C, const char* fn) const {
  for (int64_t b = 0; b < batch(); ++b)
    check(seen_[b] <= limits::kMaxStreamTokens - C, fn, ": row ", b, " has seen ", seen_[b], " tokens; ", C,
          " more would pass the limit of ", limits::kMaxStreamTokens, " (reset the stream)");
}

SlidingWindow SlidingWindow::restored(const SafetensorsFile& f, const std::string& prefix) const {
  const char* fn = "SlidingWindow::restore";
  const auto shape = f.int64s(prefix + "shape");
  check(shape == std::vector<int64_t>{batch(), length_, width_}, fn, ": ", f.path(), ": '", prefix,
        "shape' (batch, L, W) does not match this window (", batch(), ", ", length_, ", ", width_, ")");
  const auto seen = f.int64s(prefix + "seen");
  check(static_cast<int64_t>(seen.size()) == batch(), fn, ": ", f.path(), ": '", prefix, "seen': expected ",
        batch(), " rows, got ", seen.size());
  SlidingWindow w(batch(), length_, width_);
  for (int64_t b = 0; b < batch(); ++b) {
    check(seen[b] >= 0 && seen[b] <= limits::kMaxStreamTokens, fn, ": ", f.path(), ": '", prefix, "seen' row ", b,
          ": expected 0 <= seen <= ", limits::kMaxStreamTokens, ", got ", seen[b]);
    const int64_t n = std::min(seen[b], length_);
    if (n == 0) continue;
    const std::string name = prefix + "rows." + std::to_string(b);
    const Tensor t = f.tensor(name);
    check_shape(t, {n, width_}, fn, name.c_str());
    for (int64_t i = 0; i < n; ++i) w.push(b, t.data() + i * width_);
    w.seen_[b] = seen[b];
  }
  return w;
}

}  // namespace tokenmix
