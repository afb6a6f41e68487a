// `tokenmix bench`: time every registered layer (tools/cli/bench_families.cpp) at fixed shapes,
// next to the OpenBLAS rate at the layer's projection shape measured in the same run.
#include <cblas.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>

#include "alloc/alloc_counter.h"
#include "cli/bench_registry.h"
#include "cli/commands.h"

namespace tokenmix::cli {

namespace {

using bench::BenchShape;
using bench::Mode;

struct BenchOptions {
  std::vector<int> threads{1};
  std::string json, filter;
  int repeats = 5;
  int steps = 200;
  bool sweep = false;
};

struct Stats {
  double median_ms = 0, min_ms = 0;
};

Stats stats_of(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  Stats s;
  s.min_ms = ms.front();
  s.median_ms = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  return s;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Minor page faults of the process so far (getrusage): a call that touches fresh pages (a buffer
// allocated and freed per call, returned to the OS) shows up here.
int64_t minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

void set_threads(int n) {
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int run(const BenchOptions& o) {
  check(o.repeats >= 1, "tokenmix bench: --repeats: expected >= 1, got ", o.repeats);
  check(o.steps >= 1, "tokenmix bench: --steps: expected >= 1, got ", o.steps);
  std::regex filter;
  try {
    filter = std::regex(o.filter.empty() ? std::string(".") : o.filter);
  } catch (const std::regex_error& e) {
    fail("tokenmix bench: --filter: invalid regular expression '", o.filter, "': ", e.what());
  }
  for (int t : o.threads) check(t >= 1, "tokenmix bench: --threads: expected >= 1, got ", t);

  nlohmann::json out = nlohmann::json::array();
  std::printf("%-15s %-7s %-18s %3s %10s %10s %8s  %-22s %8s %6s %9s %8s %s\n", "layer", "mode", "shape", "thr",
              "median_ms", "min_ms", "GFLOP/s", "BLAS reference", "GFLOP/s", "peak%", "extra_MiB", "faults",
              "stream: x weight-bound");
  for (int threads : o.threads) {
    set_threads(threads);
    for (const auto& fam : bench::families()) {
      for (const BenchShape& shape : bench::standard_shapes(o.sweep)) {
        const std::string id = fam.name + "/" + bench::mode_name(shape.mode) + "/" + shape.str();
        if (!std::regex_search(id, filter)) continue;
        if (shape.mode == Mode::stream && !fam.stream_options) continue;
        if (shape.mode == Mode::offline && !fam.offline) continue;
        const bench::BlasReference ref = bench::blas_reference(shape, bench::Runner::params_of(fam, shape));
        bench::BlasRunner blas_runner(ref);

        // Extra heap = high-water mark above the live bytes once weights and input exist (stream: the
        // stream state, KV cache / windows, and the context push count as extra).
        bench::Runner runner(fam, shape);
        const int64_t base = alloc::reset_heap_peak();
        runner.prepare();
        runner.call();  // warm-up; its allocations count
        const double extra_mib = static_cast<double>(alloc::heap_peak_bytes() - base) / (1024.0 * 1024.0);
        // A second warm-up: glibc raises its mmap threshold when the first call frees its large
        // output, so the second call's output comes from the heap, whose fresh pages fault once.
        runner.call();
        blas_runner.call();
        // Layer and BLAS reference calls alternate one to one, so both sample the same machine
        // conditions (the machine may be shared) and every layer call finds the caches as the
        // previous reference call left them: the protocol of bench/torch_baseline.py.
        const int calls = shape.mode == Mode::offline ? o.repeats : o.steps;
        std::vector<double> layer_ms, blas_ms;
        int64_t layer_faults = 0;  // minor page faults inside the layer calls (fresh pages touched)
        for (int i = 0; i < calls; ++i) {
          const int64_t faults_before = minor_faults();
          double t0 = now_ms();
          runner.call();
          layer_ms.push_back(now_ms() - t0);
          layer_faults += minor_faults() - faults_before;
          t0 = now_ms();
          blas_runner.call();
          blas_ms.push_back(now_ms() - t0);
        }
        const Stats st = stats_of(layer_ms), blas = stats_of(blas_ms);
        const double blas_gflops = ref.flops / (blas.median_ms * 1e6);
        const double flops = fam.flops(shape);
        const double gflops = flops / (st.median_ms * 1e6);
        const double fraction = gflops / blas_gflops;
        nlohmann::json j{{"impl", "tokenmix"},
                         {"layer", fam.name},
                         {"mode", bench::mode_name(shape.mode)},
                         {"shape", shape.str()},
                         {"dims", {{"B", shape.batch}, {"T", shape.length}, {"E", shape.width}, {"H", shape.heads}}},
                         {"threads", threads},
                         {"median_ms", st.median_ms},
                         {"min_ms", st.min_ms},
                         {"flops", flops},
                         {"gflops", gflops},
                         {"ref", ref.what},
                         {"ref_gflops", blas_gflops},
                         {"peak_fraction", fraction},
                         {"peak_mib", extra_mib},
                         {"minor_faults_per_call", static_cast<double>(layer_faults) / calls}};
        std::string extra;
        if (shape.mode == Mode::stream) {
          // Time to stream the layer's weights once with sgemv (the reference call).
          const double bound_ms = blas.median_ms;
          j["weight_bound_ms"] = bound_ms;
          j["x_weight_bound"] = st.median_ms / bound_ms;
          char buf[64];
          std::snprintf(buf, sizeof buf, "%.2fx of %.3f ms", st.median_ms / bound_ms, bound_ms);
          extra = buf;
        }
        std::printf("%-15s %-7s %-18s %3d %10.3f %10.3f %8.1f  %-22s %8.1f %5.0f%% %9.1f %8.1f %s\n", fam.name.c_str(),
                    bench::mode_name(shape.mode), shape.str().c_str(), threads, st.median_ms, st.min_ms, gflops,
                    ref.what.c_str(), blas_gflops, 100 * fraction, extra_mib,
                    static_cast<double>(layer_faults) / calls, extra.c_str());
        std::fflush(stdout);
        out.push_back(j);
      }
    }
  }
  if (!o.json.empty()) {
    const std::string text = out.dump(1) + "\n";
    write_file_atomically(o.json, {{text.data(), text.size()}}, "tokenmix bench: --json");
  }
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, int* status) {
  auto opts = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Time every layer at fixed shapes (offline B=8,T=256 and B=1,T=4096; stream B=1 with 256 tokens of "
      "context, one token per step; E=512, H=8) and compare with the OpenBLAS rate at the layer's projection "
      "shape (sgemm M=B*T,N=K=E offline; stream: sgemv through as many distinct E x E weights as the layer has parameters, i.e. the time to stream its weight bytes) measured in the same run. extra_MiB is the heap "
      "high-water mark above the bytes live before the call (offline: inputs and weights excluded; stream: "
      "includes the stream state), counted by a global operator new; OpenBLAS's fixed buffers are not counted. "
      "faults is the mean number of minor page faults per timed layer call (getrusage) after two warm-up calls: "
      "fresh pages touched per call, e.g. a buffer the allocator returned to the OS between calls.");
  cmd->add_option("--threads", opts->threads,
                  "Thread counts to run (each sets omp_set_num_threads and openblas_set_num_threads). Default 1");
  cmd->add_option("--json", opts->json,
                  "Write the measurements as a JSON array (layer, mode, shape, threads, median_ms, min_ms, "
                  "gflops, peak_fraction, peak_mib, ...)");
  cmd->add_option("--filter", opts->filter, "Only measurements whose 'layer/mode/shape' matches this regex");
  cmd->add_option("--repeats", opts->repeats, "Timed calls per offline measurement (after one warm-up). Default 5");
  cmd->add_option("--steps", opts->steps, "Timed one-token pushes per stream measurement. Default 200");
  cmd->add_flag("--sweep", opts->sweep, "Also run offline B=1 at T = 64, 128, ..., 8192 (for bench/plot.py)");
  cmd->callback([opts, status] { *status = run(*opts); });
}

}  // namespace tokenmix::cli
