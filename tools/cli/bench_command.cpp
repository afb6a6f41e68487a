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
  std::vector<std::string> precisions{"fp32"}, gemms{"onednn"};
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

// One way of running the layers: a precision on a GEMM backend (the cross product of --precision and
// --gemm; the reference backend runs fp32 only).
struct Variant {
  std::string label;  // "bf16", "fp32/reference"
  LinearOptions linear;
};

std::vector<Variant> variants(const BenchOptions& o) {
  std::vector<Variant> out;
  for (const std::string& g : o.gemms) {
    check(g == "onednn" || g == "reference", "tokenmix bench: --gemm: expected onednn or reference, got '", g, "'");
    const GemmBackend backend = g == "onednn" ? GemmBackend::kOnednn : GemmBackend::kReference;
    for (const std::string& p : o.precisions) {
      const Precision precision = parse_precision(p, "tokenmix bench: --precision");
      if (backend == GemmBackend::kReference && precision != Precision::kFp32) continue;
      if (backend == GemmBackend::kOnednn) resolve_precision(precision);  // a clear error before any timing
      out.push_back({backend == GemmBackend::kReference ? p + "/reference" : p, {precision, backend}});
    }
  }
  check(!out.empty(), "tokenmix bench: --precision / --gemm: no combination to run (the reference GEMM runs fp32 only)");
  return out;
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

  const std::vector<Variant> runs = variants(o);
  nlohmann::json out = nlohmann::json::array();
  std::printf("%-15s %-7s %-18s %3s %-14s %10s %10s %8s %5s  %-22s %8s %6s %9s %8s %9s  %s\n", "layer", "mode", "shape",
              "thr", "precision", "median_ms", "min_ms", "GFLOP/s", "fma%", "BLAS reference", "GFLOP/s", "blas%",
              "extra_MiB", "faults", "err/fp32", "impl; stream: x weight-bound");
  for (int threads : o.threads) {
    set_threads(threads);
    std::string fma_isa;
    const double fma_peak = bench::fma_peak_gflops(threads, &fma_isa);
    std::printf("# %d thread(s): measured float32 FMA peak %.1f GFLOP/s (%s)\n", threads, fma_peak, fma_isa.c_str());
    for (const auto& fam : bench::families()) {
      for (const BenchShape& shape : bench::standard_shapes(o.sweep)) {
        const std::string id = fam.name + "/" + bench::mode_name(shape.mode) + "/" + shape.str();
        if (!std::regex_search(id, filter)) continue;
        if (shape.mode == Mode::stream && !fam.stream_options) continue;
        if (shape.mode == Mode::offline && !fam.offline) continue;
        const bench::BlasReference ref = bench::blas_reference(shape, bench::Runner::params_of(fam, shape));
        bench::BlasRunner blas_runner(ref);

        // The fp32 output every variant's error is measured against (reference GEMM, not timed).
        Tensor want;
        {
          bench::Runner fp32(fam, shape, {Precision::kFp32, GemmBackend::kReference});
          fp32.prepare();
          fp32.call();
          want = fp32.output().clone();  // (a stream's push may return a view of its own buffer)
        }
        // Extra heap = high-water mark above the live bytes once weights and input exist (stream: the
        // stream state, KV cache / windows, and the context push count as extra).
        std::vector<std::unique_ptr<bench::Runner>> runners;
        std::vector<double> extra_mib, error;
        for (const Variant& v : runs) {
          runners.push_back(std::make_unique<bench::Runner>(fam, shape, v.linear));
          bench::Runner& runner = *runners.back();
          const int64_t base = alloc::reset_heap_peak();
          runner.prepare();
          runner.call();  // warm-up; its allocations count
          extra_mib.push_back(static_cast<double>(alloc::heap_peak_bytes() - base) / (1024.0 * 1024.0));
          error.push_back(scaled_error(runner.output(), want));
          // A second warm-up: glibc raises its mmap threshold when the first call frees its large
          // output, so the second call's output comes from the heap, whose fresh pages fault once.
          runner.call();
        }
        blas_runner.call();
        // Every variant's calls and the BLAS reference alternate one to one, so all sample the same
        // machine conditions (the machine may be shared) and each call finds the caches as the previous
        // call left them: the protocol of bench/torch_baseline.py.
        const int calls = shape.mode == Mode::offline ? o.repeats : o.steps;
        std::vector<std::vector<double>> layer_ms(runs.size());
        std::vector<double> blas_ms;
        std::vector<int64_t> layer_faults(runs.size(), 0);  // minor page faults inside the layer calls
        for (int i = 0; i < calls; ++i) {
          for (size_t v = 0; v < runs.size(); ++v) {
            const int64_t faults_before = minor_faults();
            const double t0 = now_ms();
            runners[v]->call();
            layer_ms[v].push_back(now_ms() - t0);
            layer_faults[v] += minor_faults() - faults_before;
          }
          const double t0 = now_ms();
          blas_runner.call();
          blas_ms.push_back(now_ms() - t0);
        }
        const Stats blas = stats_of(blas_ms);
        const double blas_gflops = ref.flops / (blas.median_ms * 1e6);
        const double flops = fam.flops(shape);
        for (size_t v = 0; v < runs.size(); ++v) {
          const Stats st = stats_of(layer_ms[v]);
          const double gflops = flops / (st.median_ms * 1e6);
          const double fraction = gflops / blas_gflops;
          const Linear& proj = runners[v]->layer().projection();
          nlohmann::json j{{"impl", "tokenmix"},
                           {"layer", fam.name},
                           {"mode", bench::mode_name(shape.mode)},
                           {"shape", shape.str()},
                           {"dims", {{"B", shape.batch}, {"T", shape.length}, {"E", shape.width}, {"H", shape.heads}}},
                           {"threads", threads},
                           {"precision", precision_name(proj.precision())},
                           {"requested", runs[v].label},
                           {"gemm", proj.impl()},
                           {"median_ms", st.median_ms},
                           {"min_ms", st.min_ms},
                           {"flops", flops},
                           {"gflops", gflops},
                           {"ref", ref.what},
                           {"ref_gflops", blas_gflops},
                           {"peak_fraction", fraction},
                           {"fma_peak_gflops", fma_peak},
                           {"fma_peak_fraction", fma_peak > 0 ? gflops / fma_peak : 0.0},
                           {"peak_mib", extra_mib[v]},
                           {"weight_mib", runners[v]->layer().weight_bytes() / 1048576.0},
                           {"minor_faults_per_call", static_cast<double>(layer_faults[v]) / calls},
                           {"max_rel_err_vs_fp32", error[v]}};
          std::string extra = proj.impl();
          if (shape.mode == Mode::stream) {
            // Time to stream the layer's float32 weights once with sgemv (the reference call).
            const double bound_ms = blas.median_ms;
            j["weight_bound_ms"] = bound_ms;
            j["x_weight_bound"] = st.median_ms / bound_ms;
            char buf[64];
            std::snprintf(buf, sizeof buf, "; %.2fx of %.3f ms", st.median_ms / bound_ms, bound_ms);
            extra += buf;
          }
          std::printf("%-15s %-7s %-18s %3d %-14s %10.3f %10.3f %8.1f %4.0f%%  %-22s %8.1f %5.0f%% %9.1f %8.1f %9.1e  %s\n",
                      fam.name.c_str(), bench::mode_name(shape.mode), shape.str().c_str(), threads,
                      runs[v].label.c_str(), st.median_ms, st.min_ms, gflops,
                      fma_peak > 0 ? 100 * gflops / fma_peak : 0.0, ref.what.c_str(), blas_gflops,
                      100 * fraction, extra_mib[v], static_cast<double>(layer_faults[v]) / calls, error[v],
                      extra.c_str());
          std::fflush(stdout);
          out.push_back(j);
        }
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
      "fma% is the layer's GFLOP/s over the float32 FMA peak measured at the start of each thread count (12 "
      "independent vfmadd chains per thread, AVX-512 where present); blas% over the same-run OpenBLAS reference. "
      "faults is the mean number of minor page faults per timed layer call (getrusage) after two warm-up calls: "
      "fresh pages touched per call, e.g. a buffer the allocator returned to the OS between calls.");
  cmd->add_option("--threads", opts->threads,
                  "Thread counts to run (each sets omp_set_num_threads and openblas_set_num_threads). Default 1");
  cmd->add_option("--precision", opts->precisions,
                  "Precisions to run side by side, e.g. fp32,bf16 (each: fp32, bf16, int8 or auto; bf16 is an error on a "
                  "CPU without AVX512-BF16 / AMX). err/fp32 is max |y - y_fp32| / max |y_fp32| against the same layer "
                  "run in fp32 on the reference GEMM. Default fp32")
      ->delimiter(',');
  cmd->add_option("--gemm", opts->gemms,
                  "GEMM backends to run side by side: onednn (prepacked weights), reference (OpenBLAS sgemm on the "
                  "weights as loaded; fp32 only). Default onednn")
      ->delimiter(',');
  cmd->add_option("--json", opts->json,
                  "Write the measurements as a JSON array (layer, mode, shape, threads, precision, gemm, median_ms, "
                  "min_ms, gflops, peak_fraction, peak_mib, weight_mib, minor_faults_per_call, max_rel_err_vs_fp32, ...)");
  cmd->add_option("--filter", opts->filter, "Only measurements whose 'layer/mode/shape' matches this regex");
  cmd->add_option("--repeats", opts->repeats, "Timed calls per offline measurement (after one warm-up). Default 5");
  cmd->add_option("--steps", opts->steps, "Timed one-token pushes per stream measurement. Default 200");
  cmd->add_flag("--sweep", opts->sweep, "Also run offline B=1 at T = 64, 128, ..., 8192 (for bench/plot.py)");
  cmd->callback([opts, status] { *status = run(*opts); });
}

}  // namespace tokenmix::cli
