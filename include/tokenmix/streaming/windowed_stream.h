// tokenmix/streaming/windowed_stream.h: the common part of the sliding-window streams of the pooling
// families (FastSelfAttentionStream, HyperMixingStream).
//
// Such a layer pools over the whole sequence, so it streams over a sliding window instead: with
// StreamOptions window = L and position = P, once a batch row has seen L tokens every further token
// completes a window and yields one output, the offline forward over those L tokens at window
// position P. WindowedStream owns the per-row SlidingWindow of cached token rows (W floats each,
// whatever the family caches per token) and implements push (validation, windowing, output layout),
// reset, reset_row, save and restore; a family only supplies the per-token cache row (stage), the
// output of one full window (window_output) and an optional batched last step (finish).
//
// Output layout of push((B, C, E)) -> (B, C_out, E): C_out is the largest number of windows any row
// completed in this chunk; outputs are in time order and right-aligned (the last output of every row
// belongs to the chunk's last token); a row that completed fewer windows (still warming up, e.g.
// after reset_row) has zeros in its leading slots; emitted(b) gives each row's count.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tokenmix/streaming/sliding_window.h"
#include "tokenmix/streaming/stream.h"

namespace tokenmix {

// The emitted window position P of options validated by the family (window = L >= 1,
// -1 <= position < L): position, or L - 1 (the newest token) for -1.
inline int64_t window_position(const StreamOptions& options) {
  return options.position < 0 ? options.window - 1 : options.position;
}

// The offline definition a WindowedStream reproduces (the layers' stream_reference): for x (B, T, E)
// returns (B, max(T - L + 1, 0), E) whose row s is forward(x[:, s : s + L])[:, P], L = options.window,
// P = window_position(options), where forward maps a window (B, L, E) to (B, L, E). Costs one
// forward per window. options must have been validated by the caller; throws what forward throws.
Tensor sliding_window_reference(const Tensor& x, const StreamOptions& options,
                                const std::function<Tensor(const Tensor&)>& forward);

class WindowedStream : public Stream {
 public:
  // (B, the largest number of windows a row completes with `chunk` more tokens, E).
  Shape output_shape(int64_t chunk) const final;
  int64_t delay() const final { return length_ - 1 - position_; }
  void reset() final;
  // Throws Error "<name>::reset_row: b: expected 0 <= b < B, got ..." when b is out of range.
  void reset_row(int64_t b) final;
  int64_t window() const { return length_; }
  int64_t position() const { return position_; }  // resolved, 0 <= P < L
  // Tokens pushed to batch row b since its last reset (its window is full once seen(b) >= L).
  int64_t seen(int64_t b) const { return window_.seen(b); }
  // Outputs row b received from the last push (the trailing entries of its C_out outputs). Throws
  // Error "<name>::emitted: b: expected 0 <= b < B, got ..." when b is out of range.
  int64_t emitted(int64_t b) const;

 protected:
  // push(): chunk (B, C, E), C >= 1. Throws Error "<name>::push: chunk: expected shape (B, C, E)
  // with C >= 1, got ...", and Error when a row would pass limits::kMaxStreamTokens. Returns (B, C_out, E) as described above, a view of the stream's buffer
  // valid until the next call.
  Tensor push_chunk(const Tensor& chunk) final;
  // State: header config (batch, E, <family config...>, window, position) as named by config_names,
  // the windows under "window." (see SlidingWindow::save); SlidingWindow::restored's errors for a
  // damaged window or a counter out of range.
  std::string state_name() const final { return name_; }
  std::vector<int64_t> state_config() const final { return config_; }
  std::string state_config_names() const final { return config_names_; }
  void save_state(SafetensorsWriter& writer) const final;
  void restore_state(const SafetensorsFile& file) final;
  // name: the class name used in errors and saved as metadata "stream". batch >= 1 and options
  // (window = L >= 1, -1 <= position < L) must have been validated by the family (with its own
  // messages). d_model = E; row_width = W, the floats cached per token. family_config: the
  // family's configuration values saved between E and the window in "config", named (for the
  // restore error) by config_names, e.g. "batch, E, H, window, position".
  WindowedStream(const char* name, int64_t batch, const StreamOptions& options, int64_t d_model,
                 int64_t row_width, const std::vector<int64_t>& family_config, const char* config_names);

  // Hooks, called by push in this order:
  // Rows x (n, E) of the chunk (n = B·C, batch-major) -> their cache rows (n, W).
  virtual void stage(const float* x, int64_t n, float* rows) = 0;
  // Batch row b's full window rows (L, W), oldest first -> its output y (E) at flat output index
  // slot (= b·C_out + j); y is zeroed before the call.
  virtual void window_output(int64_t b, const float* rows, int64_t slot, float* y) = 0;
  // Once after all windows of a push that completed at least one (c_out >= 1); out is (B, C_out, E).
  // Zeros in the leading slots of rows with emitted(b) < C_out must be kept.
  virtual void finish(int64_t c_out, float* out) { (void)c_out, (void)out; }

  const std::string name_, push_fn_;
  const int64_t batch_, d_model_, length_, position_;  // B, E, L, P

 private:
  SlidingWindow window_;
  std::vector<int64_t> config_;
  const char* config_names_;
  std::vector<float> staged_, out_;  // (B·C, W), (B, C_out, E): grown only
  std::vector<int64_t> emitted_;
};

}  // namespace tokenmix
