// Hostile input: every reproducer under tests/data/regressions (copied from shared/reliability; its
// README says what each one did) ends in a tokenmix::Error, and every counter of every stream's saved
// state is checked on restore, which leaves the stream unchanged when it fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "cases/case.h"
#include "stream_checks.h"
#include "test_util.h"
#include "tokenmix/core/checked.h"
#include "tokenmix/layers/continual_mha.h"
#include "tokenmix/layers/espnet_mha.h"
#include "tokenmix/layers/fastformer.h"
#include "tokenmix/layers/hypermixing.h"

namespace tokenmix {
namespace {

namespace fs = std::filesystem;

const std::string kRegressions = std::string(TOKENMIX_REFERENCE_DIR) + "/../regressions";

std::vector<std::string> regression_files(const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(kRegressions)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && e.path().extension() == ".safetensors") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// ---- case files: each must end in tokenmix::Error (not another exception, not a crash) ----

class HostileCase : public ::testing::TestWithParam<std::string> {};

TEST_P(HostileCase, EndsInTokenmixError) {
  try {
    SafetensorsFile f(GetParam());
    cases::run_case(f);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_FALSE(std::string(e.what()).empty());
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a tokenmix::Error: " << typeid(e).name() << ": " << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Regressions, HostileCase, ::testing::ValuesIn(regression_files("run-")),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = test::case_name(info.param);
                           for (auto& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

// ---- saved stream states with a counter at INT64_MAX (E = 8, H = 2, batch 2; README) ----

StateDict linear_weights(const std::vector<std::pair<std::string, Shape>>& keys) {
  StateDict sd;
  uint32_t seed = 1;
  for (const auto& [key, shape] : keys) test::add_random(sd, key, shape, seed++);
  return sd;
}

// The layer and options of the stream that saved `path` (by its "stream" metadata).
std::pair<std::unique_ptr<Layer>, StreamOptions> layer_for_state(const std::string& stream) {
  const int64_t E = 8, H = 2;
  StreamOptions o;
  if (stream == "EspnetMultiHeadedAttention") {
    std::vector<std::pair<std::string, Shape>> keys;
    for (const char* p : {"linear_q", "linear_k", "linear_v", "linear_out"})
      keys.insert(keys.end(), {{std::string(p) + ".weight", Shape{E, E}}, {std::string(p) + ".bias", Shape{E}}});
    o.left_context = 3;
    return {std::make_unique<EspnetMultiHeadedAttention>(E, H, linear_weights(keys)), o};
  }
  o.window = 3;
  o.position = -1;
  if (stream == "FastSelfAttentionStream") {
    std::vector<std::pair<std::string, Shape>> keys;
    for (const char* p : {"query", "key", "transform"})
      keys.insert(keys.end(), {{std::string(p) + ".weight", Shape{E, E}}, {std::string(p) + ".bias", Shape{E}}});
    for (const char* p : {"query_att", "key_att"})
      keys.insert(keys.end(), {{std::string(p) + ".weight", Shape{H, E}}, {std::string(p) + ".bias", Shape{H}}});
    return {std::make_unique<FastSelfAttention>(E, H, 0.0, linear_weights(keys)), o};
  }
  if (stream == "HyperMixingStream") {
    HyperMixingOptions h;
    h.input_output_dim = E;
    h.hypernet_size = 8;
    h.num_heads = H;
    h.max_length = 16;
    const int64_t d = E / H, K = 4;
    std::vector<std::pair<std::string, Shape>> keys = {{"layer_norm.weight", Shape{E}}, {"layer_norm.bias", Shape{E}}};
    for (const char* g : {"hyper.w1_gen.", "hyper.w2_gen."})
      keys.insert(keys.end(), {{std::string(g) + "fc1_weights", Shape{H, d, d}},
                               {std::string(g) + "fc1_biases", Shape{H, d}},
                               {std::string(g) + "fc2_weights", Shape{H, K, d}},
                               {std::string(g) + "fc2_biases", Shape{H, K}}});
    return {std::make_unique<HyperMixing>(h, linear_weights(keys)), o};
  }
  ContinualMhaOptions c;
  c.embed_dim = E;
  c.num_heads = H;
  c.sequence_len = 4;
  const StateDict sd = linear_weights({{"in_proj_weight", Shape{3 * E, E}},
                                       {"in_proj_bias", Shape{3 * E}},
                                       {"out_proj.weight", Shape{E, E}},
                                       {"out_proj.bias", Shape{E}}});
  if (stream == "SingleOutputMultiheadAttentionStream")
    return {std::make_unique<SingleOutputMultiheadAttention>(c, sd), StreamOptions{}};
  return {std::make_unique<RetroactiveMultiheadAttention>(c, sd), StreamOptions{}};
}

class HostileState : public ::testing::TestWithParam<std::string> {};

TEST_P(HostileState, RestoreRefusesAndLeavesTheStreamUnchanged) {
  const SafetensorsFile f(GetParam());
  auto [layer, opts] = layer_for_state(f.metadata().at("stream"));
  auto stream = layer->open_stream(2, opts);
  auto twin = layer->open_stream(2, opts);
  const Tensor x = test::random_tensor(Shape{2, 3, 8}, 7);
  stream->push(x);
  twin->push(x);
  const Tensor next = test::random_tensor(Shape{2, 3, 8}, 8);
  if (f.contains("kv.position")) {
    // The KV cache keeps no position counter (its state is the visible keys and values): the old
    // file's 'kv.position' is not read, and the stream continues from the cached tokens.
    stream->restore(f);
    twin->restore(f);
    const Tensor y = stream->push(next).clone();
    for (const float v : y) ASSERT_TRUE(std::isfinite(v));
    EXPECT_TRUE(test::bit_equal(y, twin->push(next).clone()));
    return;
  }
  EXPECT_THROW(stream->restore(f), Error);
  EXPECT_TRUE(test::bit_equal(stream->push(next).clone(), twin->push(next).clone()));
}

INSTANTIATE_TEST_SUITE_P(Regressions, HostileState, ::testing::ValuesIn(regression_files("restore-")),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = test::case_name(info.param);
                           for (auto& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

// ---- every counter of every stream, from real saved states ----

// A copy of file with I64 tensor `name`'s element i set to value (every other tensor as stored).
void write_with_counter(const SafetensorsFile& file, const std::string& name, size_t i, int64_t value,
                        const std::string& path) {
  SafetensorsWriter w;
  for (const auto& [k, v] : file.metadata()) w.set_metadata(k, v);
  for (const auto& n : file.names()) {
    const TensorInfo& in = file.info(n);
    if (in.dtype == DType::I64) {
      auto values = file.int64s(n);
      if (n == name) values[i] = value;
      w.add_int64s(n, values);
    } else if (in.dtype == DType::F32) {
      w.add(n, file.tensor_flat(n), in.dims);
    } else {
      w.add(n, file.mask(n), in.dims);
    }
  }
  w.write(path);
}

class CounterCheck : public ::testing::TestWithParam<std::string> {};

TEST_P(CounterCheck, EveryCounterOutOfRangeIsRefused) {
  const SafetensorsFile cf(GetParam());
  const cases::Case c = cases::parse_case(cf);
  const auto& fam = cases::family_for(c.module);
  if (!fam.build_layer) GTEST_SKIP() << "not a sequence layer";
  const auto layer = fam.build_layer(c);
  if (!layer) GTEST_SKIP() << "not a sequence layer";
  const int64_t E = layer->d_model();
  StreamOptions want;
  want.left_context = 3;
  want.window = 2;
  const StreamOptions opts = test::accepted_options(*layer, want);
  auto stream = layer->open_stream(2, opts);
  stream->push(test::random_tensor(Shape{2, 5, E}, 3));
  stream->reset_row(1);
  stream->push(test::random_tensor(Shape{2, 2, E}, 4));
  const std::string saved = test::temp_path("counter_saved.safetensors");
  const std::string bad = test::temp_path("counter_bad.safetensors");
  const std::string after = test::temp_path("counter_after.safetensors");
  stream->save(saved);
  const SafetensorsFile sf(saved);
  int checked = 0;
  for (const auto& name : sf.names()) {
    if (sf.info(name).dtype != DType::I64) continue;
    const auto values = sf.int64s(name);
    for (size_t i = 0; i < values.size(); ++i)
      for (const int64_t v : {std::numeric_limits<int64_t>::max(), int64_t{-1}, limits::kMaxStreamTokens + 1}) {
        write_with_counter(sf, name, i, v, bad);
        EXPECT_THROW(stream->restore(bad), Error) << name << "[" << i << "] = " << v;
        stream->save(after);
        ASSERT_EQ(file_bytes(after), file_bytes(saved)) << "a failed restore changed the stream (" << name << ")";
        ++checked;
      }
  }
  EXPECT_GT(checked, 0);
  stream->restore(saved);  // the untouched state still restores
}

std::vector<std::string> stream_cases() {
  std::vector<std::string> out;
  for (const char* fam : {"espnet_mha", "fastformer", "hypermixing", "continual", "primer_ez"}) {
    const auto all = test::reference_cases(fam);
    for (size_t i = 0; i < all.size(); i += 4) out.push_back(all[i]);  // a spread of each family
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Streams, CounterCheck, ::testing::ValuesIn(stream_cases()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return test::case_name(info.param);
                         });

// ---- core size arithmetic ----

TEST(CheckedSizes, OverflowIsAnError) {
  EXPECT_EQ(mul_checked(1 << 20, 1 << 20, "f", "n"), int64_t{1} << 40);
  test::expect_error([] { mul_checked(int64_t{1} << 40, int64_t{1} << 40, "f", "buffer"); },
                     "f: buffer: size 1099511627776 x 1099511627776 overflows");
  test::expect_error([] { mul_checked(-1, 2, "f", "n"); }, "f: n: expected sizes >= 0");
  test::expect_error([] { numel_checked({1 << 30, 1 << 30, 1 << 30}, "f", "n"); }, "overflows");
  test::expect_error([] { check_range(5, 1, 4, "f", "window"); }, "f: window: expected 1 <= window <= 4, got 5");
  test::expect_error([] { Shape({int64_t{1} << 40, int64_t{1} << 40}); }, "Shape: element count");
  // More than any machine has: an Error naming the shape, not std::bad_alloc.
  test::expect_error([] { Tensor t{Shape{int64_t{1} << 28, int64_t{1} << 28}}; }, "Tensor: cannot allocate");
}

// A stream at its token limit refuses the next push instead of overflowing its counter.
TEST(CheckedSizes, StreamCounterLimit) {
  const SafetensorsFile f(regression_files("restore-fastformer")[0]);
  auto [layer, opts] = layer_for_state("FastSelfAttentionStream");
  auto stream = layer->open_stream(2, opts);
  stream->push(test::random_tensor(Shape{2, 3, 8}, 1));
  const std::string saved = test::temp_path("limit_saved.safetensors");
  const std::string at_limit = test::temp_path("limit_at.safetensors");
  stream->save(saved);
  const SafetensorsFile sf(saved);
  write_with_counter(sf, "window.seen", 0, limits::kMaxStreamTokens, at_limit);
  stream->restore(at_limit);  // at the limit is valid
  test::expect_error([&] { stream->push(test::random_tensor(Shape{2, 1, 8}, 2)); },
                     "FastSelfAttentionStream::push: row 0 has seen 4611686018427387904 tokens");
}

}  // namespace
}  // namespace tokenmix
