// bench/tokenmix_bench.cpp: Google Benchmark targets over the `tokenmix bench` registry.
//
// For every family of tools/cli/bench_families.cpp and every standard shape (offline B=8,T=256 and
// B=1,T=4096; stream B=1 with 256 tokens of context; E=512, H=8) one benchmark
// "<layer>/<mode>/<shape>", plus the BLAS references "blas/sgemm/MxNxK" (x · Wᵀ at each projection
// shape) and "blas/4x/sgemv/NxK" (one token through four distinct E x E weights). Counters: FLOPS (rate of the
// registry's FLOP count). Threads: OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, or --threads=N here.
// Plus the attention kernel alone, "kernel/attention/T<T>[_causal]": attention() over one (T, 3E)
// self-attention buffer (E = 512, H = 8, head_dim 64, as the layers call it), FLOPS = 4·T²·E (half
// of that causal: the products only, softmax not counted); "kernel/attention_bf16/..." the same with
// bf16 products (AttentionShape::bf16_products; skipped below the avx512_bf16 kernel set).
//
// And ESPnet's cross-attention decode, "espnet_mha/cross_step/mem256": step(query, memory) of one
// token against 256 memory frames projected once by project_memory() (E = 512, H = 8).
//
//   ./build/bench/tokenmix_bench --benchmark_filter=espnet_mha
//   ./build/bench/tokenmix_bench --benchmark_filter=kernel/ --benchmark_repetitions=5
//   OMP_WAIT_POLICY=PASSIVE ./build/bench/tokenmix_bench --benchmark_filter=cross_step --threads=2
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <cstring>
#include <set>
#include <string>

#include "cli/bench_registry.h"
#include "tokenmix/core/cpu.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/layers/espnet_mha.h"

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

// attention() alone on a packed (T, 3E) q/k/v buffer, the layout the self-attention layers pass.
void register_attention_kernel() {
  constexpr int64_t E = 512, H = 8;
  for (const bool bf16 : {false, true})
  for (const int64_t T : {256, 1024, 4096})
    for (const bool causal : {false, true}) {
      const std::string name =
          std::string(bf16 ? "kernel/attention_bf16/T" : "kernel/attention/T") + std::to_string(T) + (causal ? "_causal" : "");
      benchmark::RegisterBenchmark(name.c_str(), [T, causal, bf16](benchmark::State& st) {
        if (bf16 && tokenmix::kernel_isa() < tokenmix::KernelIsa::kAvx512Bf16) {
          st.SkipWithError("kernel set has no AVX512-BF16");
          return;
        }
        const tokenmix::Tensor qkv = random_input(tokenmix::Shape{T, 3 * E});
        std::vector<float> ctx(static_cast<size_t>(T * E));
        tokenmix::AttentionShape s;
        s.batch = 1;
        s.heads = H;
        s.head_dim = E / H;
        s.q_len = s.k_len = T;
        s.scale = 0.125f;
        s.causal = causal;
        s.bf16_products = bf16;
        const float* p = qkv.data();
        const tokenmix::HeadsView q{p, 0, 3 * E}, k{p + E, 0, 3 * E}, v{p + 2 * E, 0, 3 * E};
        const tokenmix::HeadsOut out{ctx.data(), 0, E};
        tokenmix::attention(s, q, k, v, nullptr, out);  // warm-up: grows the per-thread scratch
        for (auto _ : st) tokenmix::attention(s, q, k, v, nullptr, out);
        const double flops = 4.0 * static_cast<double>(T) * static_cast<double>(T) * E * (causal ? 0.5 : 1.0);
        st.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
      })->Unit(benchmark::kMillisecond)->UseRealTime();
    }
}

// ESPnet cross-attention decode: the memory projected once, then one query token per step.
void register_cross_attention_step() {
  benchmark::RegisterBenchmark("espnet_mha/cross_step/mem256", [](benchmark::State& st) {
    constexpr int64_t E = 512, H = 8, frames = 256;
    const tokenmix::EspnetMultiHeadedAttention layer(
        E, H, random_state_dict(concat({linear_params("linear_q.", E, E), linear_params("linear_k.", E, E),
                                        linear_params("linear_v.", E, E), linear_params("linear_out.", E, E)})));
    const auto memory = layer.project_memory(random_input(tokenmix::Shape{1, frames, E}), tokenmix::Mask{});
    const tokenmix::Tensor query = random_input(tokenmix::Shape{1, E}, 7);
    for (auto _ : st) benchmark::DoNotOptimize(layer.step(query, memory));
  })->Unit(benchmark::kMicrosecond)->UseRealTime();
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
  register_attention_kernel();
  register_cross_attention_step();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
