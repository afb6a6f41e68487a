// tools/cli/bench_registry.h: the layers `tokenmix bench` and the Google Benchmark targets measure.
//
// One BenchFamily entry per measured layer (tools/cli/bench_families.cpp): the state_dict keys and
// shapes to fill with random weights, the constructor, the FLOP count of one call per mode, the
// stream options that hold a given history, and whether the offline mode is measured. Everything else
// (random weights, inputs, timing, the BLAS peak reference, memory accounting, JSON) is generic and
// lives in bench_registry.cpp / bench_command.cpp, so a new layer adds itself with one table entry.
//
// Adding a layer: one BenchFamily entry in bench_families.cpp (FLOP count written from the math next
// to it) and one Baseline subclass of the same name in bench/torch_baseline.py (same FLOP count, a
// check() replaying the family's reference cases, the same stream window).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenmix/core/tensor.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/streaming/stream.h"

namespace tokenmix::bench {

enum class Mode {
  offline,  // one Layer::forward of x (B, T, E), no mask
  stream,   // one Stream::push of a (B, 1, E) token after `length` tokens of history
};
const char* mode_name(Mode m);

// One measured configuration. offline: x is (batch, length, width). stream: the stream has already
// consumed `length` tokens (the context) and the timed call pushes one more token per batch row.
struct BenchShape {
  Mode mode = Mode::offline;
  int64_t batch = 1, length = 1, width = 512, heads = 8;
  // "B8_T256_E512_H8" (offline) / "B1_ctx256_E512_H8" (stream).
  std::string str() const;
};

// A state_dict entry to fill with random values: 2-D weights N(0, 1/fan_in), everything else
// N(0, 0.3²) (the reference cases' init).
using ParamSpec = std::pair<std::string, Shape>;

struct BenchFamily {
  // The measurement's name (the JSON "layer"; unique in the table): the family name (Layer::name()),
  // e.g. "espnet_mha", or a variant of it when a family has several classes ("labml_mha" / "primer_ez",
  // "continual_so" / "continual_retro").
  std::string name;
  // state_dict keys and shapes of the layer built for this shape (width E, heads H).
  std::function<std::vector<ParamSpec>(const BenchShape&)> params;
  // Builds the layer from a state_dict holding random values for params(shape), its projections
  // running as `linear` says (precision, GEMM backend).
  std::function<std::unique_ptr<Layer>(const BenchShape&, const StateDict&, const LinearOptions&)> make;
  // Floating-point operations (multiply and add counted separately) of one offline forward of the
  // whole (B, T, E) input, or of one streamed token for all B rows (Mode::stream). Written from the
  // math next to the entry; elementwise work (softmax, bias, activations) may be left out, say so.
  std::function<double(const BenchShape&)> flops;
  // Options of a stream that keeps `shape.length` tokens of history (the attention window of the
  // timed token is then length + 1). Empty: the family is not measured in stream mode. A family whose
  // window is a constructor argument (continual's sequence_len) builds it in make() and returns {}.
  std::function<StreamOptions(const BenchShape&)> stream_options;
  // false: the family is not measured in offline mode (its forward() is not a meaningful workload,
  // e.g. continual single-output attention computes one query).
  bool offline = true;
};

// The registered families, in table order (bench_families.cpp).
const std::vector<BenchFamily>& families();

// Helpers for table entries.
// PyTorch nn.Linear parameters "<prefix>weight" (out, in) and, when bias, "<prefix>bias" (out).
std::vector<ParamSpec> linear_params(const std::string& prefix, int64_t out, int64_t in, bool bias = true);
// Concatenation of spec lists.
std::vector<ParamSpec> concat(std::vector<std::vector<ParamSpec>> lists);

// Random state_dict for the given specs (seeded: identical for every run).
StateDict random_state_dict(const std::vector<ParamSpec>& specs, uint32_t seed = 1234);
// Total number of floats in the specs.
int64_t param_count(const std::vector<ParamSpec>& specs);
// N(0, 1) tensor of the given shape (seeded).
Tensor random_input(const Shape& shape, uint32_t seed = 99);

// The fixed shapes of `tokenmix bench`: offline (B=8, T=256) and (B=1, T=4096); stream (B=1,
// context 256); E = 512, H = 8. With sweep, also offline B=1 at T = 64, 128, ..., 8192.
std::vector<BenchShape> standard_shapes(bool sweep);

// The BLAS reference a measurement is compared with (same run, same threads):
//   offline: cblas_sgemm at the layer's projection shape, M = B*T, N = K = E (x · Wᵀ);
//   stream:  cblas_sgemv of one token through `matrices` distinct E x E weights, one after the
//            other, with matrices = round(layer parameters / E²): the time to stream the layer's
//            weight bytes through the CPU at the rate sgemv reaches (the floor for one token).
struct BlasReference {
  std::string what;  // e.g. "sgemm 2048x512x512", "4x sgemv 512x512"
  double flops = 0;  // of one call (all matrices)
  int64_t m = 0, n = 0, k = 0;
  int64_t matrices = 1;
  bool gemv = false;
};
// params: floats in the layer's parameters (stream mode only).
BlasReference blas_reference(const BenchShape& s, int64_t params = 0);

// One measurement: the constructor builds the layer and the input; prepare() opens the stream (if
// any) and pushes its context; call() runs the timed operation once. Construction throws Error when
// the family cannot run the shape (e.g. no stream).
class Runner {
 public:
  Runner(const BenchFamily& family, const BenchShape& shape, const LinearOptions& linear = {});
  ~Runner();
  void call();
  // The output of the last call() (offline: the forward's; stream: the push's).
  const Tensor& output() const { return output_; }
  const Layer& layer() const { return *layer_; }
  // Floats in the layer's parameters.
  int64_t params() const { return params_; }
  // Floats in the parameters of `family` at `shape` (without building the layer).
  static int64_t params_of(const BenchFamily& family, const BenchShape& shape);
  // (Re-)opens the stream and pushes the context (stream mode; no-op offline). Call before call().
  void prepare();

 private:
  const BenchFamily& family_;
  BenchShape shape_;
  std::unique_ptr<Layer> layer_;
  std::unique_ptr<Stream> stream_;
  Tensor input_, context_, output_;
  int64_t params_ = 0;
};

// The measured float32 FMA peak of `threads` cores, GFLOP/s (2 flops per lane per FMA): 12 independent
// chains of vfmadd on AVX-512 registers where the CPU has AVX-512F, else AVX2 + FMA (0 on CPUs with
// neither), about 0.2 s on each thread at once. isa receives "avx512" / "avx2" / "none". The
// denominator of the bench's fma% column: what no kernel can exceed on this machine.
double fma_peak_gflops(int threads, std::string* isa);

// Runs the BLAS reference once (buffers owned by the object).
class BlasRunner {
 public:
  explicit BlasRunner(const BlasReference& r);
  void call();

 private:
  BlasReference r_;
  std::vector<float> a_, b_, c_;  // x, the weights (matrices of them back to back), y
};

}  // namespace tokenmix::bench
