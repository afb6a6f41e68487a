// The unified streaming contract, checked for every layer the reference cases build (every family,
// every variant): streamed outputs equal Layer::stream_reference for chunk sizes 1, 3, whole and mixed,
// a saved and restored stream continues bit-for-bit, resetting one batch row leaves the others alone,
// and pushes after warm-up allocate nothing.
#include <gtest/gtest.h>

#include <map>

#include "cases/case.h"
#include "stream_checks.h"
#include "test_util.h"

namespace tokenmix {
namespace {

struct LayerCase {
  std::string path;
  std::string label;
};
void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.path; }

// One case per distinct (module, config) among the shipped reference cases.
std::vector<LayerCase> layer_cases() {
  std::vector<LayerCase> out;
  std::map<std::string, bool> seen;
  for (const auto& fam : cases::families())
    for (const auto& p : test::reference_cases(fam.family)) {
      SafetensorsFile f(p);
      const std::string key = f.metadata().at("module") + f.metadata().at("config");
      if (seen[key]) continue;
      seen[key] = true;
      out.push_back({p, test::case_name(p)});
    }
  return out;
}

class StreamContract : public ::testing::TestWithParam<LayerCase> {
 protected:
  void SetUp() override {
    file_ = std::make_unique<SafetensorsFile>(GetParam().path);
    const cases::Case c = cases::parse_case(*file_);
    const auto& fam = cases::family_for(c.module);
    if (fam.build_layer) layer_ = fam.build_layer(c);
    if (!layer_) GTEST_SKIP() << "not a sequence layer (no unified Layer API)";
  }
  std::unique_ptr<SafetensorsFile> file_;
  std::unique_ptr<Layer> layer_;
};

TEST_P(StreamContract, StreamEqualsReferenceRestoresAndResetsRows) {
  const int64_t E = layer_->d_model();
  const Tensor x = test::random_tensor(Shape{2, 29, E}, 42);
  for (const int64_t left_context : {0, 5}) {
    StreamOptions opts;
    opts.left_context = left_context;
    opts.window = 4;
    for (const int64_t position : {-1, 1}) {
      opts.position = position;
      SCOPED_TRACE("left_context " + std::to_string(left_context) + " position " + std::to_string(position));
      opts = test::accepted_options(*layer_, opts);
      test::expect_stream_matches_reference(*layer_, x, opts, 2e-5f);
      test::expect_restore_continues_identically(*layer_, x, opts,
                                                 test::temp_path(GetParam().label + ".state.safetensors"));
      test::expect_reset_row_isolated(*layer_, x, opts);
    }
  }
}

TEST_P(StreamContract, NoHeapAllocationPerPushAfterWarmUp) {
  const Tensor x = test::random_tensor(Shape{2, 36, layer_->d_model()}, 43);
  StreamOptions opts;
  opts.left_context = 6;  // bounded KV cache (unlimited context grows the cache by doubling)
  opts.window = 4;
  opts = test::accepted_options(*layer_, opts);
  for (const int64_t C : {1, 3}) test::expect_no_allocations_per_push(*layer_, x, opts, C);
  // The same layer on the reference GEMM backend: no allocation at all.
  cases::Case c = cases::parse_case(*file_);
  c.linear = {Precision::kFp32, GemmBackend::kReference};
  const auto reference = cases::build_layer(c);
  for (const int64_t C : {1, 3}) test::expect_no_allocations_per_push(*reference, x, opts, C);
}

// Offline forward reuses its scratch (the layer's WorkspacePool): a later call of the same shape
// allocates its output and at most 16 KiB more (the heap high-water mark above the bytes live before
// the call), so no large buffer is allocated, and page-faulted, again. (The margin: a worker thread's
// first oneDNN call on a projection creates its execution context, a stream and a 640-byte
// scratchpad, and whether a warm-up call already did depends on how the OpenMP threads overlapped.)
TEST_P(StreamContract, ForwardReusesScratch) {
  const StreamOptionSpec spec = layer_->stream_options_accepted();
  const int64_t T = spec.window ? std::min<int64_t>(64, spec.max_window) : 64;
  const Tensor x = test::random_tensor(Shape{2, T, layer_->d_model()}, 44);
  const int64_t out_bytes = static_cast<int64_t>(sizeof(float)) * x.numel();
  // (a few warm-up calls: how many per-worker workspaces a call creates depends on how the OpenMP
  // threads overlap)
  for (int i = 0; i < 3; ++i) const Tensor warm = layer_->forward(x);
  const int64_t base = alloc::reset_heap_peak();
  { const Tensor y = layer_->forward(x); }
  const int64_t extra = alloc::heap_peak_bytes() - base;
  RecordProperty("forward_extra_bytes", std::to_string(extra));
  std::printf("[ scratch ] %s: repeated forward's extra heap %lld bytes (output %lld)\n", GetParam().label.c_str(),
              static_cast<long long>(extra), static_cast<long long>(out_bytes));
  EXPECT_LE(extra, out_bytes + (16 << 10)) << "the forward allocated scratch again";
}

INSTANTIATE_TEST_SUITE_P(AllLayers, StreamContract, ::testing::ValuesIn(layer_cases()),
                         [](const ::testing::TestParamInfo<LayerCase>& info) { return info.param.label; });

}  // namespace
}  // namespace tokenmix
