// bench/tokenmix_bench.cpp: Google Benchmark targets over the `tokenmix bench` registry.
//
// For every family of tools/cli/bench_families.cpp and every standard shape (offline B=8,T=256 and
// B=1,T=4096; stream B=1 with 256 tokens of context; E=512, H=8) one benchmark
// "<layer>/<mode>/<shape>", plus the BLAS references "blas/sgemm/MxNxK" (x · Wᵀ at each projection
// shape) and "blas/4x/sgemv/NxK" (one token through four distinct E x E weights). Counters: FLOPS (rate of the
// registry's FLOP count). Threads: OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, or --threads=N here.
//
//   ./build/bench/tokenmix_bench --benchmark_filter=espnet_mha
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <cstring>
#include <set>
#include <string>

#include "cli/bench_registry.h"

namespace {

using namespace tokenmix::bench;

void register_all() {
  std::set<std::string> refs;
  for (const BenchShape& shape : standard_shapes(false)) {
    // Offline: sgemm at the projection shape; stream: sgemv over 4 E x E weights (ESPnet MHA's).
    const BlasReference ref = blas_reference(shape, 4 * shape.width * shape.width);
    if (!refs.insert(ref.what).second) continue;
    std::string name = "blas/" + ref.what;
    for (auto& c : name)
      if (c == ' ') c = '/';
    benchmark::RegisterBenchmark(name.c_str(), [ref](benchmark::State& st) {
      BlasRunner r(ref);
      for (auto _ : st) r.call();
      st.counters["FLOPS"] = benchmark::Counter(ref.flops, benchmark::Counter::kIsIterationInvariantRate);
    })->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  for (const BenchFamily& fam : families()) {
    for (const BenchShape& shape : standard_shapes(false)) {
      if (shape.mode == Mode::stream && !fam.stream_options) continue;
      if (shape.mode == Mode::offline && !fam.offline) continue;
      const std::string name = fam.name + "/" + mode_name(shape.mode) + "/" + shape.str();
      benchmark::RegisterBenchmark(name.c_str(), [&fam, shape](benchmark::State& st) {
        Runner r(fam, shape);
        r.prepare();
        r.call();  // warm-up (stream: the ring buffer is then in its steady state)
        for (auto _ : st) r.call();
        st.counters["FLOPS"] = benchmark::Counter(fam.flops(shape), benchmark::Counter::kIsIterationInvariantRate);
      })->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // --threads=N (ours, removed before Google Benchmark parses the rest).
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      const int n = std::atoi(argv[i] + 10);
      omp_set_num_threads(n);
      openblas_set_num_threads(n);
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
