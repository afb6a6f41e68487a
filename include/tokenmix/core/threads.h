// tokenmix/core/threads.h: the threading policy, in one place: how many threads one call may use,
// the size thresholds below which work stays on the calling thread, and parallel_for, through which
// layers and kernels parallelise (OpenMP pragmas live here and in the kernels only).
//
// tokenmix parallelises with OpenMP, and links the OpenMP build of OpenBLAS, which sizes each BLAS
// call by the calling thread's omp_get_max_threads(). One per-thread setting therefore governs both.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "tokenmix/core/workspace.h"

namespace tokenmix {

// The thresholds. Each keeps work that takes less than waking a sleeping OpenMP thread on the
// calling thread: a wake-up costs about 0.1 ms under OMP_WAIT_POLICY=PASSIVE on the benchmark
// machine (BENCHMARKS.md), more than one core takes for the work below each threshold at E = 512;
// each value was set from a same-run sweep of the benchmark it affects (BENCHMARKS.md history).
namespace threshold {
// Stream pushes (and continual forward_step(s)) of fewer tokens in all (B·C): a one-token step of
// E = 512 takes 0.1-0.2 ms on one core. A stream whose single token costs far more than a wake-up
// lowers this for itself (Stream::parallel_min_tokens).
inline constexpr int64_t kStreamTokens = 8;
// Row-wise element passes (masking, residuals, LayerNorm, positional adds): rows.
inline constexpr int64_t kRows = 64;
// The bias pass that first touches a fresh GEMM output: elements.
inline constexpr int64_t kFirstTouchElements = int64_t{1} << 18;
// attention(): batch · heads · queries · keys · head_dim multiply-adds.
inline constexpr double kAttentionMacs = 1 << 20;
// Fastformer's per-head pooling of one sequence: tokens T.
inline constexpr int64_t kPoolTokens = 2048;
// BLAS matrix-vector products (and N = 1 GEMMs): matrix elements (4 MB). OpenBLAS threads any sgemv
// above about 9k elements; a 1536 x 512 sgemv took 67 us on one thread and 215 us on two.
inline constexpr int64_t kSerialGemvElements = int64_t{1} << 20;
// Thin GEMMs (at most kThinColumns output columns, Fastformer's H-wide logits): split by rows over
// the threads from kThinRowsPerThread rows per thread, single-threaded below.
inline constexpr int64_t kThinColumns = 16, kThinRowsPerThread = 1024;
}  // namespace threshold


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
// limit.
inline int stream_threads(int64_t tokens, int64_t min_tokens = threshold::kStreamTokens) {
  return tokens < min_tokens ? 1 : std::numeric_limits<int>::max();
}

enum class Schedule { kStatic, kDynamic };

// body(i) for every i in [0, n): over the calling thread's OpenMP threads when parallel is true
// (the caller's size test against a threshold above), else on the calling thread. Iterations must be
// independent. kDynamic hands out one i at a time (iterations of uneven cost).
template <typename Body>
void parallel_for(int64_t n, bool parallel, Body&& body, Schedule schedule = Schedule::kStatic) {
  if (schedule == Schedule::kDynamic) {
#pragma omp parallel for schedule(dynamic) if (parallel && n > 1)
    for (int64_t i = 0; i < n; ++i) body(i);
  } else {
#pragma omp parallel for schedule(static) if (parallel && n > 1)
    for (int64_t i = 0; i < n; ++i) body(i);
  }
}

// As parallel_for, with a workspace for each thread: body(i, ws). The workspaces are borrowed from
// pool for the call, all up front (one per thread the call uses), so calls of a given size always
// use the same workspaces, which keep their buffers; the schedule is static (each thread gets the
// same iterations every call), so nothing is allocated after the first call.
template <typename Body>
void parallel_for_workspaces(int64_t n, bool parallel, WorkspacePool& pool, Body&& body) {
  const int threads = parallel && n > 1 ? static_cast<int>(std::min<int64_t>(omp_get_max_threads(), n)) : 1;
  std::vector<WorkspacePool::Lease> leases;
  leases.reserve(threads);
  for (int t = 0; t < threads; ++t) leases.push_back(pool.acquire());
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    Workspace& ws = *leases[omp_get_thread_num()];
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i, ws);
  }
}

}  // namespace tokenmix
