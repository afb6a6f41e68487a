// tokenmix/core/threads.h: how many threads one call may use.
//
// tokenmix parallelises with OpenMP, and links the OpenMP build of OpenBLAS, which sizes each BLAS
// call by the calling thread's omp_get_max_threads(). One per-thread setting therefore governs both.
#pragma once

#include <cstdint>
#include <limits>

namespace tokenmix {

// Stream pushes (and the continual forward_step / forward_steps) of fewer tokens than this in all
// (B·C < 8) run on the calling thread alone. Waking a sleeping OpenMP thread costs about 0.1 ms on
// the benchmark machine under OMP_WAIT_POLICY=PASSIVE (BENCHMARKS.md), more than a one-token step
// of E = 512 takes on one core (0.1-0.2 ms), so a second thread only slows such steps down.
// Throughput over many streams comes from running them on separate threads. A stream whose single
// token costs far more than a wake-up lowers this for itself (Stream::parallel_min_tokens).
inline constexpr int64_t kParallelMinTokens = 8;

// Scope guard: while it lives, the calling thread's OpenMP regions and OpenBLAS calls use at most
// max_threads threads (omp_set_num_threads on the calling thread; restored on destruction). It
// changes nothing when max_threads >= the current omp_get_max_threads(). max_threads < 1 is taken
// as 1. OpenBLAS builds without OpenMP (pthreads) ignore it for their BLAS calls.
class ThreadLimit {
 public:
  explicit ThreadLimit(int max_threads);
  ~ThreadLimit();
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int saved_ = 0;  // the setting to restore, 0 = nothing changed
};

// The limit for work of `tokens` tokens (B·C) of a streaming step: 1 below min_tokens, otherwise no
// limit. A stream whose single token costs far more than a wake-up passes a smaller min_tokens
// (Stream::parallel_min_tokens).
inline int stream_threads(int64_t tokens, int64_t min_tokens = kParallelMinTokens) {
  return tokens < min_tokens ? 1 : std::numeric_limits<int>::max();
}

}  // namespace tokenmix
