#include "tokenmix/streaming/windowed_stream.h"

#include <algorithm>
#include <cstring>

#include "tokenmix/core/checked.h"
#include "tokenmix/core/error.h"

namespace tokenmix {

Tensor sliding_window_reference(const Tensor& x, const StreamOptions& options,
                                const std::function<Tensor(const Tensor&)>& forward) {
  const int64_t L = options.window, P = window_position(options);
  const int64_t B = x.dim(0), T = x.dim(1), E = x.dim(2);
  const int64_t n = std::max<int64_t>(0, T - L + 1);
  Tensor out{Shape{B, n, E}};
  Tensor win{Shape{B, L, E}};
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(win.data() + b * L * E, x.data() + (b * T + s) * E, sizeof(float) * L * E);
    const Tensor y = forward(win);
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(out.data() + (b * n + s) * E, y.data() + (b * L + P) * E, sizeof(float) * E);
  }
  return out;
}

WindowedStream::WindowedStream(const char* name, int64_t batch, const StreamOptions& options, int64_t d_model,
                               int64_t row_width, const std::vector<int64_t>& family_config,
                               const char* config_names)
    : name_(name), push_fn_(name_ + "::push"), batch_(batch), d_model_(d_model), length_(options.window),
      position_(window_position(options)), window_(batch, length_, row_width),
      config_names_(config_names), emitted_(batch, 0) {
  config_ = {batch_, d_model_};
  config_.insert(config_.end(), family_config.begin(), family_config.end());
  config_.insert(config_.end(), {length_, position_});
}

Tensor WindowedStream::push_chunk(const Tensor& chunk) {
  const int64_t B = batch_, E = d_model_, L = length_, W = window_.width();
  if (chunk.ndim() != 3 || chunk.dim(0) != B || chunk.dim(1) < 1 || chunk.dim(2) != E)
    fail(name_, "::push: chunk: expected shape (", B, ", C, ", E, ") with C >= 1, got ", chunk.shape());
  const int64_t C = chunk.dim(1);
  window_.check_room(C, push_fn_.c_str());
  const int64_t staged = mul_checked(B * C, W, push_fn_.c_str(), "chunk cache rows");
  if (static_cast<int64_t>(staged_.size()) < staged) staged_.resize(static_cast<size_t>(staged));
  if (static_cast<int64_t>(out_.size()) < B * C * E) out_.resize(static_cast<size_t>(B * C * E));
  stage(chunk.data(), B * C, staged_.data());
  // Outputs per row: the chunk tokens at which the row's window is full.
  int64_t c_out = 0;
  for (int64_t b = 0; b < B; ++b) {
    emitted_[b] = std::clamp<int64_t>(window_.seen(b) + C - L + 1, 0, C);
    c_out = std::max(c_out, emitted_[b]);
  }
  std::fill(out_.begin(), out_.begin() + B * c_out * E, 0.f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      window_.push(b, staged_.data() + (b * C + c) * W);
      if (!window_.full(b)) continue;
      const int64_t slot = b * c_out + c - (C - c_out);  // right-aligned on the chunk's last token
      window_output(b, window_.rows(b), slot, out_.data() + slot * E);
    }
  if (c_out > 0) finish(c_out, out_.data());
  return Tensor::view(Shape{B, c_out, E}, out_.data());
}

Shape WindowedStream::output_shape(int64_t chunk) const {
  int64_t c_out = 0;
  for (int64_t b = 0; b < batch_; ++b)
    c_out = std::max(c_out, std::clamp<int64_t>(window_.seen(b) + chunk - length_ + 1, 0, chunk));
  return Shape{batch_, c_out, d_model_};
}

void WindowedStream::reset() {
  window_.reset();
  std::fill(emitted_.begin(), emitted_.end(), 0);
}

void WindowedStream::reset_row(int64_t b) {
  check(b >= 0 && b < batch_, name_, "::reset_row: b: expected 0 <= b < ", batch_, ", got ", b);
  window_.reset_row(b);
  emitted_[b] = 0;
}

int64_t WindowedStream::emitted(int64_t b) const {
  check(b >= 0 && b < batch_, name_, "::emitted: b: expected 0 <= b < ", batch_, ", got ", b);
  return emitted_[b];
}

void WindowedStream::save_state(SafetensorsWriter& w) const { window_.save(w, "window."); }

void WindowedStream::restore_state(const SafetensorsFile& f) {
  window_ = window_.restored(f, "window.");  // throws before anything changes
  std::fill(emitted_.begin(), emitted_.end(), 0);
}

}  // namespace tokenmix
