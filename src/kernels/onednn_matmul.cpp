#include "onednn_matmul.h"

#include <omp.h>

#include <cmath>

#include <dnnl.hpp>
#include <mutex>
#include <vector>

#include "tokenmix/core/cpu.h"
#include "tokenmix/core/error.h"
#include "tokenmix/core/threads.h"
#include "tokenmix/core/workspace.h"
#include "convert.h"

namespace tokenmix {

namespace {
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// The first oneDNN object of the process: kernel_isa() runs before it (it may cap oneDNN's ISA).
const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine = (kernel_isa(), dnnl::engine(dnnl::engine::kind::cpu, 0));
  return engine;
}

// oneDNN wants its buffers 64-byte aligned; Workspace buffers are float vectors.
float* aligned(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63});
}

constexpr size_t kMaxPrimitives = 64;
// Input conversions (bf16 rounding, int8 quantization, strided rows packed) and the output passes
// (int8 rescale, strided rows unpacked) run over the call's threads from this many elements (a 512-row block of K = 512: 0.1-0.3 ms on one core).
constexpr int64_t kParallelElements = int64_t{1} << 15;
}  // namespace

struct OnednnMatmul::State {
  // Operands are always dense (row stride K / N): oneDNN's brgemm kernels take no other, and its
  // strided fallback is a reference loop. apply() packs strided rows into scratch instead.
  struct Key {
    int64_t M;
    bool accumulate;
    int threads;
    bool operator==(const Key& o) const { return M == o.M && accumulate == o.accumulate && threads == o.threads; }
  };
  struct Entry {
    Key key;
    uint64_t id;  // unique per primitive created (contexts find their memory objects by it)
    dnnl::matmul matmul;
    dnnl::memory::desc src, dst, scratchpad;
  };
  // What one call at a time uses: a stream, scratch, and memory objects per primitive whose data
  // handles are re-pointed per call, so a repeated shape allocates nothing of ours.
  struct Context {
    dnnl::stream stream{cpu_engine()};
    Workspace ws;  // slot 0: scratchpad, 1: dense / bf16 / int8 input rows, 2: dense output rows, 3: row scales
    struct Memories {
      uint64_t id;
      dnnl::memory src, dst, scratchpad;
    };
    std::vector<Memories> memories;  // oldest first, at most kMaxPrimitives

    Memories& memories_for(const Entry& e) {
      for (Memories& m : memories)
        if (m.id == e.id) return m;
      if (memories.size() >= kMaxPrimitives) memories.erase(memories.begin());
      const dnnl::engine& eng = cpu_engine();
      memories.push_back({e.id, dnnl::memory(e.src, eng, nullptr), dnnl::memory(e.dst, eng, nullptr),
                          dnnl::memory(e.scratchpad, eng, nullptr)});
      return memories.back();
    }
  };

  int64_t N = 0, K = 0;
  dt type = dt::f32;                // f32, bf16 or s8 (int8)
  dnnl::memory::desc weights_desc;  // the packed layout
  dnnl::memory weights, bias;       // packed weights; bias (1, N) f32 or empty (int8: added after the rescale)
  std::vector<float> weight_scales;  // int8: per output feature, W[n, :] ≈ weight_scales[n] · W_q[n, :]
  mutable std::mutex mutex;         // guards cache, next_id, contexts
  mutable std::vector<Entry> cache;  // oldest first
  mutable uint64_t next_id = 0;
  mutable std::vector<std::unique_ptr<Context>> contexts;  // idle ones

  dnnl::matmul::primitive_desc describe(const Key& k, dnnl::memory::desc* src, dnnl::memory::desc* dst) const {
    *src = dnnl::memory::desc({k.M, K}, type, tag::ab);
    *dst = dnnl::memory::desc({k.M, N}, dt::f32, tag::ab);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (type == dt::s8) attr.set_output_scales(1 << 1, weight_scales);  // per output feature
    if (k.accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.f);
      attr.set_post_ops(ops);
    }
    // Calls use the packed layout; the packing pd (weights still empty) lets oneDNN choose it.
    const dnnl::memory::desc wd = weights ? weights_desc : dnnl::memory::desc({K, N}, type, tag::any);
    return with_bias() ? dnnl::matmul::primitive_desc(dnnl::matmul::desc(*src, wd, bias.get_desc(), *dst), attr, cpu_engine())
                       : dnnl::matmul::primitive_desc(dnnl::matmul::desc(*src, wd, *dst), attr, cpu_engine());
  }

  // Whether oneDNN adds the bias (int8 adds it after the row scales).
  bool with_bias() const { return bias && type != dt::s8;
  }

  // Builds bias and the packed weights from plain (N, K) row-major weights of type plain_type (f32,
  // bf16, or s8 already quantized with weight_scales) and bias_values (N or empty); N, K and type are
  // set. Returns oneDNN's
  // implementation name. Throws Error "Linear: ..." when oneDNN cannot build the matmul.
  std::string pack(const void* plain, dt plain_type, const Tensor& bias_values, Precision precision) {
    try {
      if (!bias_values.empty()) {
        bias = dnnl::memory(dnnl::memory::desc({1, N}, dt::f32, tag::ab), cpu_engine());
        std::copy(bias_values.begin(), bias_values.end(), static_cast<float*>(bias.get_data_handle()));
      }
      // The layout oneDNN picks for the weights (the same for every M; a representative M of 256).
      dnnl::memory::desc src, dst;
      const auto pd = describe({256, false, 1}, &src, &dst);
      weights_desc = pd.weights_desc();
      weights = dnnl::memory(weights_desc, cpu_engine());
      // PyTorch's (N, K) row-major weight is the (K, N) matrix in layout "ba" (int8: the reorder adds
      // the compensation oneDNN's s8 x s8 kernels need; bf16 from f32: rounded to nearest even).
      dnnl::memory src_weights(dnnl::memory::desc({K, N}, plain_type, tag::ba), cpu_engine(), const_cast<void*>(plain));
      dnnl::stream stream(cpu_engine());
      dnnl::reorder(src_weights, weights).execute(stream, src_weights, weights);
      stream.wait();
      return pd.impl_info_str();
    } catch (const dnnl::error& e) {
      fail("Linear: oneDNN cannot build a ", precision_name(precision), " matmul of ", K, " -> ", N,
           " features on this CPU (", e.what(), ")");
    }
  }

  // The cached primitive for k (created on first use, under the thread count of the call). Called
  // with mutex held.
  const Entry& entry(const Key& k) const {
    for (const Entry& e : cache)
      if (e.key == k) return e;
    Entry e{k, next_id++, {}, {}, {}, {}};
    const auto pd = describe(k, &e.src, &e.dst);
    e.matmul = dnnl::matmul(pd);
    e.scratchpad = pd.scratchpad_desc();
    if (cache.size() >= kMaxPrimitives) cache.erase(cache.begin());
    cache.push_back(std::move(e));
    return cache.back();
  }
};

OnednnMatmul::OnednnMatmul(const Tensor& weight, const Tensor& bias, Precision precision)
    : s_(std::make_unique<State>()), precision_(precision) {
  check(precision != Precision::kAuto, "Linear: precision: expected a resolved one, got auto");
  State& s = *s_;
  s.N = weight.dim(0);
  s.K = weight.dim(1);
  s.type = precision == Precision::kBf16 ? dt::bf16 : precision == Precision::kInt8 ? dt::s8 : dt::f32;
  if (s.type != dt::s8) {
    impl_ = s.pack(weight.data(), dt::f32, bias, precision);
    return;
  }
  // int8: symmetric per-output-feature weight scales (max |W[n, :]| / 127), rounded to nearest.
  s.weight_scales.resize(s.N);
  std::vector<int8_t> quantized(s.N * s.K);
  for (int64_t n = 0; n < s.N; ++n) {
    s.weight_scales[n] = convert::quantize_row(weight.data() + n * s.K, s.K, quantized.data() + n * s.K);
    check(!std::isnan(s.weight_scales[n]), "Linear: int8: weight row ", n, " holds a non-finite value");
  }
  impl_ = s.pack(quantized.data(), dt::s8, bias, precision);
}

OnednnMatmul::OnednnMatmul(const uint16_t* bf16_weight, int64_t N, int64_t K, const Tensor& bias)
    : s_(std::make_unique<State>()), precision_(Precision::kBf16) {
  State& s = *s_;
  s.N = N;
  s.K = K;
  s.type = dt::bf16;
  impl_ = s.pack(bf16_weight, dt::bf16, bias, precision_);
}

OnednnMatmul::~OnednnMatmul() = default;

int64_t OnednnMatmul::bytes() const {
  const State& s = *s_;
  return static_cast<int64_t>(s.weights_desc.get_size() + (s.bias ? s.N * sizeof(float) : 0) +
                              s.weight_scales.size() * sizeof(float));
}

void OnednnMatmul::apply(const float* x, int64_t M, int64_t ldx, float* y, int64_t ldy, bool accumulate) const {
  const State& s = *s_;
  // Dense float32 rows go to oneDNN as they are; rows that need converting (bf16, int8, strided) go
  // through scratch in blocks of kRowBlock rows, so the scratch stays small (and in cache).
  constexpr int64_t kRowBlock = 512;
  const bool direct = s.type == dt::f32 && ldx == s.K && ldy == s.N;
  const int64_t block = direct ? std::max<int64_t>(M, 1) : kRowBlock;
  for (int64_t m0 = 0; m0 < M; m0 += block)
    run_block(x + m0 * ldx, std::min(block, M - m0), ldx, y + m0 * ldy, ldy, accumulate);
}

void OnednnMatmul::run_block(const float* x, int64_t M, int64_t ldx, float* y, int64_t ldy, bool accumulate) const {
  const State& s = *s_;
  // Inside a parallel region oneDNN runs on the calling thread: the primitive is built for one.
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const bool bf16 = s.type == dt::bf16, int8 = s.type == dt::s8;
  const int64_t N = s.N, K = s.K;
  // A strided output (and every int8 output, which takes the row scales and the bias afterwards) is
  // computed into dense rows and added / copied into y afterwards.
  const bool dense_out = ldy == N && !int8;
  const State::Key key{M, accumulate && dense_out, threads};
  const ThreadLimit limit(threads);
  std::unique_ptr<State::Context> ctx;
  State::Entry entry;  // a copy (handles): the cache may change once the lock is released
  {
    const std::lock_guard<std::mutex> lock(s.mutex);
    entry = s.entry(key);
    if (!s.contexts.empty()) {
      ctx = std::move(s.contexts.back());
      s.contexts.pop_back();
    }
  }
  if (!ctx) ctx = std::make_unique<State::Context>();
  State::Context::Memories& mem = ctx->memories_for(entry);
  const void* src = x;
  float* row_scales = nullptr;
  if (int8) {
    // Each input row quantized on its own scale: x[m, :] ≈ row_scales[m] · x_q[m, :] (a row holding
    // a non-finite value gets a NaN scale, so its outputs are NaN as in fp32).
    int8_t* xq = reinterpret_cast<int8_t*>(aligned(ctx->ws.floats(1, (M * K + 3) / 4 + 16)));
    row_scales = ctx->ws.floats(3, M);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && M * K >= kParallelElements)
    for (int64_t m = 0; m < M; ++m) row_scales[m] = convert::quantize_row(x + m * ldx, K, xq + m * K);
    src = xq;
  } else if (bf16) {
    // Each input row rounded to bf16 (M x K, dense).
    uint16_t* xb = reinterpret_cast<uint16_t*>(aligned(ctx->ws.floats(1, (M * K + 1) / 2 + 16)));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && M * K >= kParallelElements)
    for (int64_t m = 0; m < M; ++m) convert::round_bf16_row(x + m * ldx, K, xb + m * K);
    src = xb;
  } else if (ldx != K) {
    float* xd = aligned(ctx->ws.floats(1, M * K + 16));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && M * K >= kParallelElements)
    for (int64_t m = 0; m < M; ++m) std::copy(x + m * ldx, x + m * ldx + K, xd + m * K);
    src = xd;
  }
  float* dst = dense_out ? y : aligned(ctx->ws.floats(2, M * N + 16));
  mem.src.set_data_handle(const_cast<void*>(src));
  mem.dst.set_data_handle(dst);
  mem.scratchpad.set_data_handle(
      aligned(ctx->ws.floats(0, static_cast<int64_t>(entry.scratchpad.get_size() / sizeof(float)) + 16)));
  // The C API takes the arguments as an array (the C++ one builds a hash map per call).
  dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, mem.src.get()},
                             {DNNL_ARG_WEIGHTS, s.weights.get()},
                             {DNNL_ARG_DST, mem.dst.get()},
                             {DNNL_ARG_SCRATCHPAD, mem.scratchpad.get()},
                             {DNNL_ARG_BIAS, s.bias.get(true)}};
  const dnnl_status_t status =
      dnnl_primitive_execute(entry.matmul.get(), ctx->stream.get(), s.with_bias() ? 5 : 4, args);
  const dnnl_status_t waited = dnnl_stream_wait(ctx->stream.get());
  if (!dense_out && status == dnnl_success) {
    // The dense rows into y: int8 rescaled by their row scales and biased here, others as they are.
    const float* b = int8 && s.bias ? static_cast<const float*>(s.bias.get_data_handle()) : nullptr;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && M * N >= kParallelElements)
    for (int64_t m = 0; m < M; ++m)
      convert::store_row(dst + m * N, N, int8 ? row_scales[m] : 1.f, b, accumulate, y + m * ldy);
  }
  {
    const std::lock_guard<std::mutex> lock(s.mutex);
    s.contexts.push_back(std::move(ctx));
  }
  check(status == dnnl_success && waited == dnnl_success, "Linear: oneDNN matmul failed (status ", int(status), ")");
}

}  // namespace tokenmix
