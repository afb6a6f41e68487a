// tools/cli/bench_registry.cpp: generic parts of the benchmark registry (see bench_registry.h).
#include "cli/bench_registry.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

namespace tokenmix::bench {

const char* mode_name(Mode m) { return m == Mode::offline ? "offline" : "stream"; }

std::string BenchShape::str() const {
  const std::string t = mode == Mode::offline ? "_T" : "_ctx";
  return "B" + std::to_string(batch) + t + std::to_string(length) + "_E" + std::to_string(width) + "_H" +
         std::to_string(heads);
}

std::vector<ParamSpec> linear_params(const std::string& prefix, int64_t out, int64_t in, bool bias) {
  std::vector<ParamSpec> p{{prefix + "weight", Shape{out, in}}};
  if (bias) p.push_back({prefix + "bias", Shape{out}});
  return p;
}

std::vector<ParamSpec> concat(std::vector<std::vector<ParamSpec>> lists) {
  std::vector<ParamSpec> out;
  for (auto& l : lists) out.insert(out.end(), l.begin(), l.end());
  return out;
}

StateDict random_state_dict(const std::vector<ParamSpec>& specs, uint32_t seed) {
  StateDict sd;
  std::mt19937 gen(seed);
  for (const auto& [key, shape] : specs) {
    const float stddev = shape.ndim() == 2 ? 1.f / std::sqrt(static_cast<float>(shape[1])) : 0.3f;
    std::normal_distribution<float> dist(0.f, stddev);
    Tensor t(shape);
    for (auto& v : t) v = dist(gen);
    sd.set(key, t);
  }
  return sd;
}

int64_t param_count(const std::vector<ParamSpec>& specs) {
  int64_t n = 0;
  for (const auto& s : specs) n += s.second.numel();
  return n;
}

Tensor random_input(const Shape& shape, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  Tensor t(shape);
  for (auto& v : t) v = dist(gen);
  return t;
}

std::vector<BenchShape> standard_shapes(bool sweep) {
  std::vector<BenchShape> s{{Mode::offline, 8, 256, 512, 8}, {Mode::offline, 1, 4096, 512, 8}};
  if (sweep)
    for (int64_t t = 64; t <= 8192; t *= 2)
      if (t != 4096) s.push_back({Mode::offline, 1, t, 512, 8});
  s.push_back({Mode::stream, 1, 256, 512, 8});
  return s;
}

BlasReference blas_reference(const BenchShape& s, int64_t params) {
  BlasReference r;
  if (s.mode == Mode::offline) {
    r.m = s.batch * s.length;
    r.n = r.k = s.width;
    r.what = "sgemm " + std::to_string(r.m) + "x" + std::to_string(r.n) + "x" + std::to_string(r.k);
  } else {
    r.m = 1;
    r.n = r.k = s.width;
    r.gemv = true;
    r.matrices = std::max<int64_t>(1, std::llround(static_cast<double>(params) / static_cast<double>(r.n * r.k)));
    r.what = std::to_string(r.matrices) + "x sgemv " + std::to_string(r.n) + "x" + std::to_string(r.k);
  }
  r.flops = 2.0 * r.m * r.n * r.k * r.matrices;
  return r;
}

Runner::Runner(const BenchFamily& family, const BenchShape& shape, const LinearOptions& linear)
    : family_(family), shape_(shape) {
  check(shape.mode == Mode::stream || family.offline, "tokenmix bench: ", family.name, " has no offline mode");
  const auto specs = family.params(shape);
  params_ = param_count(specs);
  layer_ = family.make(shape, random_state_dict(specs), linear);
  if (shape.mode == Mode::offline) {
    input_ = random_input(Shape{shape.batch, shape.length, shape.width});
  } else {
    check(static_cast<bool>(family.stream_options), "tokenmix bench: ", family.name, " has no stream mode");
    context_ = random_input(Shape{shape.batch, shape.length, shape.width}, 98);
    input_ = random_input(Shape{shape.batch, 1, shape.width});
  }
}

Runner::~Runner() = default;

int64_t Runner::params_of(const BenchFamily& family, const BenchShape& shape) {
  return param_count(family.params(shape));
}

void Runner::prepare() {
  if (shape_.mode != Mode::stream) return;
  stream_.reset();
  stream_ = layer_->open_stream(shape_.batch, family_.stream_options(shape_));
  if (shape_.length > 0) stream_->push(context_);
}

void Runner::call() {
  output_ = {};  // (the previous output is freed before the call, as a caller discarding it would)
  output_ = shape_.mode == Mode::offline ? layer_->forward(input_) : stream_->push(input_);
}

BlasRunner::BlasRunner(const BlasReference& r) : r_(r) {
  a_ = std::vector<float>(static_cast<size_t>(r.m * r.k), 0.5f);
  b_ = std::vector<float>(static_cast<size_t>(r.n * r.k * r.matrices), 0.25f);
  c_ = std::vector<float>(static_cast<size_t>(r.m * r.n), 0.f);
}

void BlasRunner::call() {
  const auto m = static_cast<blasint>(r_.m), n = static_cast<blasint>(r_.n), k = static_cast<blasint>(r_.k);
  if (r_.gemv) {
    // y (N) = W (N x K) · x (K): one token through each of the nn.Linear weights.
    for (int64_t w = 0; w < r_.matrices; ++w)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.f, b_.data() + w * r_.n * r_.k, k, a_.data(), 1, 0.f,
                  c_.data(), 1);
  } else {
    // C (M x N) = A (M x K) · Wᵀ, W stored (N x K): the nn.Linear layout tokenmix uses.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.f, a_.data(), k, b_.data(), k, 0.f,
                c_.data(), n);
  }
}

namespace {
constexpr int kChains = 12;  // independent accumulators: enough to cover FMA latency x units

// FMAs per second of one thread over `seconds`, on `Vec` registers (lanes per FMA: `lanes`).
template <typename Step>
double fma_rate(double seconds, int lanes, Step step) {
  long iterations = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0;
  float sink = 0;
  while (elapsed < seconds) {
    sink += step(1 << 20, 1e-6f * static_cast<float>(iterations & 1023));  // (varies: never hoisted)
    iterations += 1 << 20;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (sink == 1234.5f) std::printf(" ");  // keeps the chains alive
  return 2.0 * lanes * kChains * static_cast<double>(iterations) / elapsed;
}

// (The empty asm with a memory clobber keeps the compilers from treating these as pure functions
// and calling them once.)
__attribute__((target("avx512f"), noinline)) float fma_chains_avx512(long n, float seed) {
  asm volatile("" ::: "memory");
  __m512 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm512_set1_ps(1.f + seed + 1e-3f * i);
  const __m512 b = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-6f);
  for (long k = 0; k < n; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
  alignas(64) float t[16];
  float s = 0;
  for (int i = 0; i < kChains; ++i) {
    _mm512_store_ps(t, a[i]);
    for (float v : t) s += v;
  }
  return s;
}

__attribute__((target("avx2,fma"), noinline)) float fma_chains_avx2(long n, float seed) {
  asm volatile("" ::: "memory");
  __m256 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm256_set1_ps(1.f + seed + 1e-3f * i);
  const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-6f);
  for (long k = 0; k < n; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  alignas(32) float t[8];
  float s = 0;
  for (int i = 0; i < kChains; ++i) {
    _mm256_store_ps(t, a[i]);
    for (float v : t) s += v;
  }
  return s;
}
}  // namespace

double fma_peak_gflops(int threads, std::string* isa) {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  *isa = avx512 ? "avx512" : avx2 ? "avx2" : "none";
  if (!avx512 && !avx2) return 0;
  double total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  total += avx512 ? fma_rate(0.2, 16, fma_chains_avx512) : fma_rate(0.2, 8, fma_chains_avx2);
  return total * 1e-9;
}

}  // namespace tokenmix::bench
