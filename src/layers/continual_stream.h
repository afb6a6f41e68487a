// src/layers/continual_stream.h (internal): the stream state shared by the continual attention
// layers' open_stream() and their upstream-style forward_step(s): the windows, the token count, the
// state header and the projections, with one subclass per algorithm
// (continual_single_output_stream.cpp, continual_retroactive_stream.cpp).
#pragma once

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tokenmix/core/checked.h"
#include "tokenmix/layers/continual_mha.h"
#include "tokenmix/streaming/sliding_window.h"

namespace tokenmix {

namespace detail {

// The stream state shared by forward_step() and open_stream(). step() takes C tokens of B rows as
// three (B, C, E) blocks (query, key, value inputs) and returns the outputs the chunk completes.
class ContinualStreamImpl : public Stream {
 public:
  // A per-row window of the stream state (its length and row width) saved under "<prefix>".
  struct WindowSpec {
    const char* prefix;
    int64_t length, width;
  };
  // config_extra: values appended to the saved config (batch, E, H, L, ...); windows: the state
  // windows, in the order they are saved.
  ContinualStreamImpl(const ContinualMultiheadAttention& layer, int64_t batch, const char* name,
                      std::vector<int64_t> config_extra, std::initializer_list<WindowSpec> windows)
      : layer_(layer), name_(name), push_fn_(std::string(name) + "::push"), B_(batch), E_(layer.E_),
        H_(layer.H_), D_(layer.D_), L_(layer.L_), config_{B_, E_, H_, L_} {
    config_.insert(config_.end(), config_extra.begin(), config_extra.end());
    for (const auto& w : windows) {
      prefixes_.push_back(w.prefix);
      windows_.emplace_back(batch, w.length, w.width);
    }
  }
  virtual Tensor step(const float* xq, const float* xk, const float* xv, int64_t C) = 0;
  virtual std::unique_ptr<ContinualStreamImpl> clone() const = 0;
  int64_t batch() const { return B_; }
  // Throws Error when C more tokens would take the token count past limits::kMaxStreamTokens.
  void check_room(int64_t C, const char* fn) const {
    check(seen_ <= limits::kMaxStreamTokens - C, fn, ": the stream has seen ", seen_, " tokens; ", C,
          " more would pass the limit of ", limits::kMaxStreamTokens, " (reset the stream)");
  }

  Shape output_shape(int64_t chunk) const override { return Shape{B_, outputs_for(chunk), E_}; }
  void reset() override {
    for (auto& w : windows_) w.reset();
    seen_ = 0;
  }
  void reset_row(int64_t b) override {
    check(b >= 0 && b < B_, name_, "::reset_row: b: expected 0 <= b < ", B_, ", got ", b);
    for (auto& w : windows_) w.reset_row(b);
  }
  // State: header config (batch, E, H, L, ...), "seen", the windows under their prefixes, then
  // whatever save_extra adds.
  std::string state_name() const override { return name_; }
  std::vector<int64_t> state_config() const override { return config_; }
  std::string state_config_names() const override { return "batch, E, H, L, ..."; }
  void save_state(SafetensorsWriter& w) const override {
    w.add_int64s("seen", {seen_});
    for (size_t i = 0; i < windows_.size(); ++i) windows_[i].save(w, prefixes_[i]);
    save_extra(w);
  }
  // Checks everything before it changes anything: a failed restore leaves the stream as it was.
  void restore_state(const SafetensorsFile& f) override {
    const std::string fn = std::string(name_) + "::restore";
    const auto seen = f.int64s("seen");
    check(seen.size() == 1 && seen[0] >= 0 && seen[0] <= limits::kMaxStreamTokens, fn, ": ", f.path(),
          ": 'seen': expected one count in [0, ", limits::kMaxStreamTokens, "]");
    std::vector<SlidingWindow> windows;
    for (size_t i = 0; i < windows_.size(); ++i) {
      windows.push_back(windows_[i].restored(f, prefixes_[i]));
      // The windows advance together, and a row's count restarts at reset_row: <= the stream's.
      for (int64_t b = 0; b < B_; ++b)
        check(windows[i].seen(b) == windows[0].seen(b) && windows[i].seen(b) <= seen[0], fn, ": ", f.path(), ": '",
              prefixes_[i], "seen' row ", b, " (", windows[i].seen(b), ") does not match '", prefixes_[0],
              "seen' (", windows[0].seen(b), ") or exceeds 'seen' (", seen[0], ")");
    }
    restore_extra(f);  // all or nothing
    windows_ = std::move(windows);
    seen_ = seen[0];
  }

 protected:
  Tensor push_chunk(const Tensor& chunk) override {
    // (checked without building the argument vectors of check_shape: push allocates nothing)
    if (chunk.ndim() != 3 || chunk.dim(0) != B_ || chunk.dim(2) != E_)
      check_shape(chunk, {B_, -1, E_}, push_fn_.c_str(), "chunk", {"B", "C", "E"});
    check(chunk.dim(1) >= 1, push_fn_, ": chunk: expected at least 1 token, got shape ", chunk.shape());
    check_room(chunk.dim(1), push_fn_.c_str());
    return step(chunk.data(), chunk.data(), chunk.data(), chunk.dim(1));
  }
  // State beyond the windows and the token count (saved after them). restore_extra is all or
  // nothing: it checks everything it reads before it changes anything.
  virtual void save_extra(SafetensorsWriter&) const {}
  virtual void restore_extra(const SafetensorsFile&) {}
  // Window i of the constructor's list.
  SlidingWindow& window(size_t i) { return windows_[i]; }
  const SlidingWindow& window(size_t i) const { return windows_[i]; }
  // Outputs completed by a chunk of C tokens: those whose index since open/reset() is >= L-1.
  int64_t outputs_for(int64_t C) const { return std::max<int64_t>(0, seen_ + C - std::max(seen_, L_ - 1)); }
  // Projects the chunk: q (scaled by 1/sqrt(D)), k, v into the scratch buffers.
  void project_chunk(const float* xq, const float* xk, const float* xv, int64_t rows) {
    const int64_t n = rows * E_;
    if (static_cast<int64_t>(pq_.size()) < n)
      for (auto* buf : {&pq_, &pk_, &pv_}) buf->resize(n);
    layer_.project(0, xq, rows, pq_.data());
    layer_.project(1, xk, rows, pk_.data());
    layer_.project(2, xv, rows, pv_.data());
    for (int64_t i = 0; i < n; ++i) pq_[i] *= layer_.scale_;
  }
  void project_out(const float* ctx, int64_t rows, float* y) const { layer_.project_out(ctx, rows, y); }
  void project_value_head(int64_t h, const float* x, int64_t rows, int64_t ldx, float* y, int64_t ldy) const {
    layer_.project_value_head(h, x, rows, ldx, y, ldy);
  }
  const float* out_bias() const { return layer_.out_.bias().empty() ? nullptr : layer_.out_.bias().data(); }

  const ContinualMultiheadAttention& layer_;
  const char* name_;
  const std::string push_fn_;
  const int64_t B_, E_, H_, D_, L_;
  int64_t seen_ = 0;                  // tokens pushed since open/reset()
  std::vector<float> pq_, pk_, pv_;  // (B, C, E) projections, grown only

 private:
  std::vector<int64_t> config_;         // (batch, E, H, L, config_extra...)
  std::vector<const char*> prefixes_;  // state-file prefix of each window
  std::vector<SlidingWindow> windows_;
};

// The newest window position (L - 1) of n windows (n, L, E) -> out (n, E): what a retroactive push
// returns of the windows it updated (the stream and its offline reference share it).
inline void newest_window_positions(const float* windows, int64_t n, int64_t L, int64_t E, float* out) {
  for (int64_t i = 0; i < n; ++i) std::copy_n(windows + (i * L + L - 1) * E, E, out + i * E);
}

// The algorithms' streams (defined in their own files).
std::unique_ptr<ContinualStreamImpl> make_single_output_stream(const ContinualMultiheadAttention& layer,
                                                               int64_t batch);
std::unique_ptr<ContinualStreamImpl> make_retroactive_stream(const ContinualMultiheadAttention& layer,
                                                             int64_t batch);

}  // namespace detail

}  // namespace tokenmix
