#include "tokenmix/streaming/sliding_window.h"

#include <algorithm>
#include <cstring>

#include "tokenmix/core/tensor.h"

namespace tokenmix {

SlidingWindow::SlidingWindow(int64_t batch, int64_t length, int64_t width)
    : length_(length), width_(width) {
  check(batch >= 1, "SlidingWindow: batch: expected >= 1, got ", batch);
  check(length >= 1, "SlidingWindow: length: expected >= 1, got ", length);
  check(width >= 1, "SlidingWindow: width: expected >= 1, got ", width);
  data_.assign(static_cast<size_t>(batch * 2 * length * width), 0.f);
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

void SlidingWindow::restore(const SafetensorsFile& f, const std::string& prefix) {
  const char* fn = "SlidingWindow::restore";
  const auto shape = f.int64s(prefix + "shape");
  check(shape == std::vector<int64_t>{batch(), length_, width_}, fn, ": ", f.path(), ": '", prefix,
        "shape' (batch, L, W) does not match this window (", batch(), ", ", length_, ", ", width_, ")");
  const auto seen = f.int64s(prefix + "seen");
  check(static_cast<int64_t>(seen.size()) == batch(), fn, ": ", f.path(), ": '", prefix, "seen': expected ",
        batch(), " rows, got ", seen.size());
  for (int64_t b = 0; b < batch(); ++b) {
    reset_row(b);
    const int64_t n = std::min(seen[b], length_);
    check(seen[b] >= 0, fn, ": ", f.path(), ": '", prefix, "seen' row ", b, " is negative");
    if (n == 0) continue;
    const std::string name = prefix + "rows." + std::to_string(b);
    const Tensor t = f.tensor(name);
    check_shape(t, {n, width_}, fn, name.c_str());
    for (int64_t i = 0; i < n; ++i) push(b, t.data() + i * width_);
    seen_[b] = seen[b];
  }
}

}  // namespace tokenmix
