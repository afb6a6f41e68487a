// tests/stream_checks.h: property checks every Layer's Stream must pass (used by the per-family tests
// and by stream_property_test.cpp over every reference-case layer).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "alloc/alloc_counter.h"
#include "test_util.h"
#include "tokenmix/streaming/stream.h"

namespace tokenmix::test {

// want restricted to the options this layer takes (Layer::stream_options_accepted): attention
// families take left_context, windowed ones a window (capped at their largest) and position;
// continual attention has its own window (sequence_len) and takes neither.
inline StreamOptions accepted_options(const Layer& layer, StreamOptions want) {
  const StreamOptionSpec spec = layer.stream_options_accepted();
  StreamOptions o;
  if (spec.left_context) o.left_context = want.left_context;
  if (spec.window) {
    o.window = std::min(want.window, spec.max_window);
    o.position = std::min(want.position, o.window - 1);
  }
  return o;
}

// Pushes x (B, T, E) through a fresh stream (or `stream`) in chunks of the given sizes (cycled) and
// returns the concatenated outputs as (B, rows, E).
inline Tensor stream_all(const Layer& layer, const Tensor& x, const StreamOptions& opts,
                         const std::vector<int64_t>& chunks, Stream* stream = nullptr) {
  std::unique_ptr<Stream> own;
  if (!stream) {
    own = layer.open_stream(x.dim(0), opts);
    stream = own.get();
  }
  const int64_t B = x.dim(0), E = x.dim(2);
  // (each push must return what output_shape(C) announced before it)
  const Tensor y = run_stream(*stream, x, chunks, nullptr, /*check_shapes=*/true);
  if (y.empty()) return Tensor{Shape{B, 0, E}};
  EXPECT_EQ(y.dim(-1), E);
  return y.reshape(Shape{B, y.numel() / (B * E), E});
}

// Streamed outputs equal layer.stream_reference(x) within tol for each chunking.
inline void expect_stream_matches_reference(const Layer& layer, const Tensor& x, const StreamOptions& opts,
                                            float tol = 1e-5f) {
  Tensor want = layer.stream_reference(x, opts);
  want = want.reshape(Shape{x.dim(0), want.numel() / (x.dim(0) * x.dim(2)), x.dim(2)});
  for (const std::vector<int64_t>& chunks :
       std::vector<std::vector<int64_t>>{{1}, {3}, {x.dim(1)}, {2, 1, 5, 3}}) {
    const Tensor got = stream_all(layer, x, opts, chunks);
    ASSERT_EQ(got.shape(), want.shape()) << "chunks " << chunks[0];
    EXPECT_LE(max_abs_diff(got, want), tol) << layer.name() << " chunks starting " << chunks[0];
  }
}

// Saving mid-stream (to a file, and in memory with state()) and restoring into a fresh stream
// continues bit-for-bit.
inline void expect_restore_continues_identically(const Layer& layer, const Tensor& x, const StreamOptions& opts,
                                                 const std::string& path) {
  const int64_t B = x.dim(0), T = x.dim(1), half = T / 2;
  auto a = layer.open_stream(B, opts);
  auto first = [&](int64_t t0, int64_t t1) {
    Tensor c{Shape{B, t1 - t0, x.dim(2)}};
    for (int64_t b = 0; b < B; ++b) std::copy(&x.at(b, t0, 0), &x.at(b, t1, 0), &c.at(b, 0, 0));
    return c;
  };
  a->push(first(0, half));
  a->save(path);
  auto b = layer.open_stream(B, opts);
  b->restore(path);
  std::remove(path.c_str());
  auto m = layer.open_stream(B, opts);
  m->load_state(a->state());
  const Tensor rest = first(half, T);
  const Tensor ya = a->push(rest).clone();
  const Tensor yb = b->push(rest).clone();
  const Tensor ym = m->push(rest).clone();
  ASSERT_EQ(ya.shape(), yb.shape());
  ASSERT_EQ(ya.shape(), ym.shape());
  EXPECT_EQ(max_abs_diff(ya, yb), 0.f) << layer.name() << ": restored stream diverged";
  EXPECT_EQ(max_abs_diff(ya, ym), 0.f) << layer.name() << ": stream restored from memory diverged";
}

// Resetting row 0 midway and replaying its sequence from the start leaves row 1 untouched and makes
// row 0 behave like a fresh stream.
inline void expect_reset_row_isolated(const Layer& layer, const Tensor& x, const StreamOptions& opts) {
  ASSERT_GE(x.dim(0), 2);
  const int64_t B = x.dim(0), T = x.dim(1), E = x.dim(2);
  auto s = layer.open_stream(B, opts);
  const Tensor all = stream_all(layer, x, opts, {1});
  // Feed everything once, reset row 0, feed everything again: row 0 must repeat its outputs, the other
  // rows continue their (now longer) sequences exactly like a stream fed x twice.
  Tensor twice{Shape{B, 2 * T, E}};
  for (int64_t b = 0; b < B; ++b) {
    std::copy(&x.at(b, 0, 0), &x.at(b, 0, 0) + T * E, &twice.at(b, 0, 0));
    std::copy(&x.at(b, 0, 0), &x.at(b, 0, 0) + T * E, &twice.at(b, T, 0));
  }
  const Tensor cont = stream_all(layer, twice, opts, {1});
  stream_all(layer, x, opts, {1}, s.get());
  s->reset_row(0);
  const Tensor second = stream_all(layer, x, opts, {1}, s.get());
  // Rows of one stream may complete different numbers of outputs per push (a reset row warms up its
  // window again); outputs are aligned on the newest token, so row 0's real outputs are the last n_all.
  const int64_t n = second.dim(1), n_all = all.dim(1);
  ASSERT_GE(n, n_all);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t e = 0; e < E; ++e) {
      if (t >= n - n_all) {
        ASSERT_EQ(second.at(0, t, e), all.at(0, t - (n - n_all), e)) << "row 0 after reset, t=" << t;
      }
      for (int64_t b = 1; b < B; ++b)
        ASSERT_NEAR(second.at(b, t, e), cont.at(b, cont.dim(1) - n + t, e), 1e-5f) << "row " << b << " disturbed";
    }
  EXPECT_THROW(s->reset_row(B), Error);
  EXPECT_THROW(s->reset_row(-1), Error);
}

// After a warm-up push of chunk size C, further pushes of size C allocate nothing of tokenmix's: none
// at all on the reference GEMM backend; on oneDNN, whose primitive execution builds a small argument
// map per call (its internals, not ours), only transient allocations: the heap does not grow and
// never rises more than 64 KiB above its level before the pushes (no buffer is allocated, and
// page-faulted, per push).
inline void expect_no_allocations_per_push(const Layer& layer, const Tensor& x, const StreamOptions& opts,
                                           int64_t C) {
  const int64_t B = x.dim(0), E = x.dim(2);
  auto s = layer.open_stream(B, opts);
  std::vector<Tensor> chunks;
  for (int64_t t = 0; t + C <= x.dim(1); t += C) {
    Tensor c{Shape{B, C, E}};
    for (int64_t b = 0; b < B; ++b) std::copy(&x.at(b, t, 0), &x.at(b, t, 0) + C * E, &c.at(b, 0, 0));
    chunks.push_back(c);
  }
  ASSERT_GE(chunks.size(), 3u);
  {  // one whole stream first: every shape a push meets (a window filling up) has been seen once
    auto warm = layer.open_stream(B, opts);
    for (const Tensor& c : chunks) warm->push(c);
  }
  s->push(chunks[0]);
  s->push(chunks[1]);
  const bool reference = layer.projection().options().backend == GemmBackend::kReference;
  const int64_t live = alloc::reset_heap_peak(), before = alloc::allocation_count();
  for (size_t i = 2; i < chunks.size(); ++i) s->push(chunks[i]);
  if (reference) {
    EXPECT_EQ(alloc::allocation_count() - before, 0) << layer.name() << ": heap allocations during push (chunk " << C
                                                     << ")";
  }
  EXPECT_LE(alloc::heap_peak_bytes() - live, 64 << 10) << layer.name() << ": a buffer allocated per push (chunk " << C
                                                       << ")";
  EXPECT_EQ(alloc::live_heap_bytes(), live) << layer.name() << ": the heap grew during pushes (chunk " << C << ")";
}

}  // namespace tokenmix::test
