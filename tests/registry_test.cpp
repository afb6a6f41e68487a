// The registry: make_layer / load_layer build the layer a checkpoint describes, with the upstream
// module name, constructor arguments and state_dict keys, and refuse what they cannot build.
#include <gtest/gtest.h>

#include "cases/case.h"
#include "test_util.h"
#include "tokenmix/layers/continual_mha.h"
#include "tokenmix/layers/espnet_mha.h"
#include "tokenmix/layers/fastformer.h"
#include "tokenmix/layers/hypermixing.h"
#include "tokenmix/layers/primer_ez.h"
#include "tokenmix/layers/registry.h"

namespace tokenmix {
namespace {

const std::string kEspnet = "espnet2.asr.state_spaces.attention.MultiHeadedAttention";

StateDict espnet_weights(int64_t E) {
  StateDict sd;
  uint32_t seed = 1;
  for (const char* p : {"linear_q", "linear_k", "linear_v", "linear_out"}) {
    test::add_random(sd, std::string(p) + ".weight", Shape{E, E}, seed++);
    test::add_random(sd, std::string(p) + ".bias", Shape{E}, seed++);
  }
  return sd;
}

TEST(Registry, EveryReferenceLayerBuildsFromItsFileAlone) {
  int built = 0;
  for (const auto& fam : cases::families())
    for (const auto& path : test::reference_cases(fam.family)) {
      const SafetensorsFile f(path);
      const cases::Case c = cases::parse_case(f);
      if (!fam.build_layer || !fam.build_layer(c)) continue;  // stand-alone convolutions, SquaredReLU
      const auto layer = load_layer(path);
      ASSERT_NE(layer, nullptr) << path;
      EXPECT_EQ(layer->name(), fam.build_layer(c)->name()) << path;
      const StreamOptionSpec spec = layer->stream_options_accepted();
      const int64_t T = spec.window ? std::min<int64_t>(7, spec.max_window) : 7;  // HyperMixing: T <= max_length
      const Tensor x = test::random_tensor(Shape{2, T, layer->d_model()}, 5);
      EXPECT_TRUE(test::bit_equal(layer->forward(x), fam.build_layer(c)->forward(x))) << path;
      ++built;
    }
  EXPECT_GT(built, 60);
}

TEST(Registry, SelfDescribingCheckpointRoundTrip) {
  const StateDict w = espnet_weights(8);
  const std::string path = test::temp_path("registry_ckpt.safetensors");
  SafetensorsWriter out;
  for (const auto& k : w.keys()) out.add(k, w.get(k));
  out.set_metadata("module", kEspnet);
  out.set_metadata("config", R"({"n_feat": 8, "n_head": 2, "dropout": 0.1})");
  out.write(path);
  const auto layer = load_layer(path);
  const EspnetMultiHeadedAttention direct(8, 2, w);
  const Tensor x = test::random_tensor(Shape{2, 5, 8}, 3);
  EXPECT_EQ(layer->name(), "espnet_mha");
  EXPECT_TRUE(test::bit_equal(layer->forward(x), direct.forward(x)));
}

TEST(Registry, ErrorsNameModuleOptionAndFile) {
  const StateDict w = espnet_weights(8);
  test::expect_error([&] { make_layer("torch.nn.Linear", "{}", w); },
                     "make_layer: module: unknown or not a sequence layer: 'torch.nn.Linear'; supported:");
  test::expect_error([&] { make_layer("torch.nn.Linear", "{}", w); }, kEspnet + " (espnet_mha)");
  test::expect_error([&] { make_layer(kEspnet, "[1]", w); }, "config: expected a JSON object, got [1]");
  test::expect_error([&] { make_layer(kEspnet, "{", w); }, "config is not valid JSON");
  test::expect_error([&] { make_layer(kEspnet, R"({"n_feat": 8, "n_head": 2, "heads": 2})", w); },
                     "config: unknown option 'heads' (accepted: n_feat, n_head, dropout, transposed)");
  test::expect_error([&] { make_layer(kEspnet, R"({"n_feat": "8", "n_head": 2})", w); },
                     "config 'n_feat': expected an integer, got \"8\"");
  test::expect_error([&] { make_layer(kEspnet, R"({"n_feat": 8, "n_head": 2, "transposed": 1})", w); },
                     "config 'transposed': expected a boolean, got 1");
  test::expect_error([&] { make_layer(kEspnet, R"({"n_head": 2})", w); }, "config: 'n_feat' is required");
  test::expect_error([&] { make_layer(kEspnet, R"({"n_feat": 18446744073709551615, "n_head": 2})", w); },
                     "expected an integer");
  test::expect_error([&] { make_layer(kEspnet, R"({"n_feat": 16, "n_head": 2})", w); }, "shape mismatches");
  const std::string bare = test::temp_path("registry_bare.safetensors");
  w.save(bare);
  test::expect_error([&] { load_layer(bare); }, "load_layer: " + bare + ": __metadata__ has no 'module'");
}

// Each family's options struct validates field by field, before any weight is read.
TEST(Registry, OptionsValidateEachField) {
  EspnetMhaOptions e;
  e.n_feat = 8;
  e.n_head = 2;
  e.validate();
  e.dropout = 1.5;
  test::expect_error([&] { e.validate(); }, "EspnetMultiHeadedAttention: dropout: expected 0 <= p <= 1, got 1.5");
  e.dropout = 0;
  e.n_head = 3;
  test::expect_error([&] { e.validate(); }, "n_feat (8) must be divisible by n_head (3)");
  test::expect_error([] { FastSelfAttentionOptions{}.validate(); },
                     "FastSelfAttention: size: expected 1 <= size <= 65536, got 0");
  const LabmlMhaOptions fresh = [] {
    LabmlMhaOptions o;
    o.heads = 2;
    o.d_model = 8;
    return o;
  }();
  LabmlMhaOptions l = fresh;
  l.validate();
  l.dropout_prob = -0.1;
  test::expect_error([&] { l.validate(); }, "LabmlMultiHeadAttention: dropout_prob: expected 0 <= p <= 1, got -0.1");
  l = fresh;
  l.bias = false;
  l.conv = QkvConv::kShared;
  test::expect_error([&] { l.validate(); }, "bias: expected true for the Primer-EZ classes");
  HyperMixingOptions h;
  h.input_output_dim = 16;
  h.hypernet_size = 6;
  h.num_heads = 4;
  test::expect_error([&] { h.validate(); }, "HyperMixing: hypernet_size (6) must be divisible by num_heads (4)");
  ContinualMhaOptions c;
  c.embed_dim = 8;
  c.num_heads = 2;
  c.sequence_len = 4;
  c.validate("X", true);
  c.embed_dim_second = true;
  test::expect_error([&] { c.validate("X", false); }, "X: embed_dim_second: requires batch_first=true");
  // The registry reports the same per-field errors for a config.
  test::expect_error([] { make_layer(kEspnet, R"({"n_feat": 8, "n_head": 2, "dropout": 3})", espnet_weights(8)); },
                     "EspnetMultiHeadedAttention: dropout: expected 0 <= p <= 1, got 3");
}

TEST(Registry, ListsEveryFamily) {
  std::set<std::string> families;
  for (const auto& m : supported_modules()) {
    families.insert(m.family);
    EXPECT_FALSE(m.options.empty()) << m.module;
    EXPECT_FALSE(m.stream_options.empty()) << m.module;
  }
  EXPECT_EQ(families, (std::set<std::string>{"espnet_mha", "continual", "hypermixing", "primer_ez", "fastformer"}));
}

}  // namespace
}  // namespace tokenmix
