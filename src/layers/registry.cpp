#include "tokenmix/layers/registry.h"

#include <functional>
#include <random>
#include <optional>
#include <limits>
#include <nlohmann/json.hpp>

#include "tokenmix/layers/continual_mha.h"
#include "tokenmix/layers/espnet_mha.h"
#include "tokenmix/layers/fastformer.h"
#include "tokenmix/layers/hypermixing.h"
#include "tokenmix/layers/primer_ez.h"

namespace tokenmix {

namespace {

// A module's constructor arguments, read strictly: every key must be one of the module's options,
// every value of the expected JSON type; null counts as absent (Python's None).
class Config {
 public:
  Config(const std::string& module, const std::string& text, const std::vector<std::string>& options)
      : module_(module) {
    try {
      json_ = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail("make_layer: ", module, ": config is not valid JSON: ", e.what());
    }
    check(json_.is_object(), "make_layer: ", module, ": config: expected a JSON object, got ", json_.dump());
    for (auto it = json_.begin(); it != json_.end(); ++it) {
      bool known = false;
      for (const auto& o : options) known = known || o == it.key();
      if (known) continue;
      std::string list;
      for (const auto& o : options) list += (list.empty() ? "" : ", ") + o;
      fail("make_layer: ", module, ": config: unknown option '", it.key(), "' (accepted: ", list, ")");
    }
  }

  // Required integer.
  int64_t integer(const char* key) const {
    const nlohmann::json* v = find(key);
    check(v != nullptr, "make_layer: ", module_, ": config: '", key, "' is required");
    return as_integer(key, *v);
  }
  int64_t integer(const char* key, int64_t fallback) const {
    const nlohmann::json* v = find(key);
    return v ? as_integer(key, *v) : fallback;
  }
  bool boolean(const char* key, bool fallback) const {
    const std::optional<bool> v = optional_boolean(key);
    return v.value_or(fallback);
  }
  std::optional<bool> optional_boolean(const char* key) const {
    const nlohmann::json* v = find(key);
    if (!v) return std::nullopt;
    check(v->is_boolean(), "make_layer: ", module_, ": config '", key, "': expected a boolean, got ", v->dump());
    return v->get<bool>();
  }
  double number(const char* key, double fallback) const {
    const nlohmann::json* v = find(key);
    if (!v) return fallback;
    check(v->is_number(), "make_layer: ", module_, ": config '", key, "': expected a number, got ", v->dump());
    return v->get<double>();
  }

 private:
  const nlohmann::json* find(const char* key) const {
    const auto it = json_.find(key);
    return it == json_.end() || it->is_null() ? nullptr : &*it;
  }
  int64_t as_integer(const char* key, const nlohmann::json& v) const {
    const bool fits = v.is_number_integer() &&
                      (!v.is_number_unsigned() ||
                       v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
    check(fits, "make_layer: ", module_, ": config '", key, "': expected an integer, got ", v.dump());
    return v.get<int64_t>();
  }

  std::string module_;
  nlohmann::json json_;
};

using Builder = std::function<std::unique_ptr<Layer>(const Config&, const StateDict&, const LinearOptions&)>;

struct Entry {
  ModuleSpec spec;
  Builder build;
};

ContinualMhaOptions continual_options(const Config& c, const LinearOptions& linear) {
  ContinualMhaOptions o;
  o.linear = linear;
  o.embed_dim = c.integer("embed_dim");
  o.num_heads = c.integer("num_heads");
  o.sequence_len = c.integer("sequence_len");
  o.dropout = c.number("dropout", 0.0);
  o.bias = c.boolean("bias", true);
  o.add_bias_kv = c.boolean("add_bias_kv", false);
  o.add_zero_attn = c.boolean("add_zero_attn", false);
  o.kdim = c.integer("kdim", 0);
  o.vdim = c.integer("vdim", 0);
  o.batch_first = c.optional_boolean("batch_first");
  o.embed_dim_second = c.boolean("embed_dim_second", false);
  o.query_index = c.integer("query_index", -1);
  o.single_output_forward = c.boolean("single_output_forward", true);
  o.forward_returns_attn_mask = c.boolean("forward_returns_attn_mask", true);
  return o;
}

Entry labml(const std::string& cls, QkvConv conv, bool has_bias) {
  std::vector<std::string> options = {"heads", "d_model", "dropout_prob"};
  if (has_bias) options.push_back("bias");
  return {{cls, "primer_ez", options, "left_context"},
          [conv](const Config& c, const StateDict& w, const LinearOptions& l) {
            LabmlMhaOptions o;
            o.linear = l;
            o.heads = c.integer("heads");
            o.d_model = c.integer("d_model");
            o.dropout_prob = c.number("dropout_prob", 0.1);
            o.bias = c.boolean("bias", true);
            o.conv = conv;
            return std::make_unique<LabmlMultiHeadAttention>(o, w);
          }};
}

const std::vector<Entry>& entries() {
  static const std::string primer = "labml_nn.transformers.primer_ez.";
  static const std::vector<std::string> continual = {
      "embed_dim", "num_heads",  "sequence_len",     "dropout",     "bias",
      "add_bias_kv", "add_zero_attn", "kdim",        "vdim",        "batch_first",
      "embed_dim_second", "query_index", "single_output_forward", "forward_returns_attn_mask"};
  static const std::vector<Entry> all = {
      {{"espnet2.asr.state_spaces.attention.MultiHeadedAttention", "espnet_mha",
        {"n_feat", "n_head", "dropout", "transposed"}, "left_context"},
       [](const Config& c, const StateDict& w, const LinearOptions& l) {
         EspnetMhaOptions o;
         o.linear = l;
         o.n_feat = c.integer("n_feat");
         o.n_head = c.integer("n_head");
         o.dropout = c.number("dropout", 0.0);
         o.transposed = c.boolean("transposed", false);
         return std::make_unique<EspnetMultiHeadedAttention>(o, w);
       }},
      {{"continual.multihead_attention.single_output_mha.SingleOutputMultiheadAttention", "continual", continual,
        "none (the window is sequence_len)"},
       [](const Config& c, const StateDict& w, const LinearOptions& l) {
         return std::make_unique<SingleOutputMultiheadAttention>(continual_options(c, l), w);
       }},
      {{"continual.multihead_attention.retroactive_mha.RetroactiveMultiheadAttention", "continual", continual,
        "none (the window is sequence_len)"},
       [](const Config& c, const StateDict& w, const LinearOptions& l) {
         return std::make_unique<RetroactiveMultiheadAttention>(continual_options(c, l), w);
       }},
      {{"speechbrain.nnet.hypermixing.HyperMixing", "hypermixing",
        {"input_output_dim", "hypernet_size", "tied", "num_heads", "fix_tm_hidden_size", "max_length"},
        "window, position"},
       [](const Config& c, const StateDict& w, const LinearOptions& l) {
         HyperMixingOptions o;
         o.linear = l;
         o.input_output_dim = c.integer("input_output_dim");
         o.hypernet_size = c.integer("hypernet_size");
         o.tied = c.boolean("tied", false);
         o.num_heads = c.integer("num_heads", 1);
         o.fix_tm_hidden_size = c.boolean("fix_tm_hidden_size", false);
         o.max_length = c.integer("max_length", 3000);
         return std::make_unique<HyperMixing>(o, w);
       }},
      labml("labml_nn.transformers.mha.MultiHeadAttention", QkvConv::kNone, true),
      labml(primer + "MultiDConvHeadAttention", QkvConv::kPerChannel, false),
      labml(primer + "variations.MultiDSharedConvHeadAttention", QkvConv::kShared, false),
      labml(primer + "variations.MultiDPHConvHeadAttention", QkvConv::kPerHead, false),
      labml(primer + "efficient.MultiDConvHeadAttention", QkvConv::kEfficient, false),
      {{"espnet2.asr.layers.fastformer.FastSelfAttention", "fastformer", {"size", "attention_heads", "dropout_rate"},
        "window, position"},
       [](const Config& c, const StateDict& w, const LinearOptions& l) {
         FastSelfAttentionOptions o;
         o.linear = l;
         o.size = c.integer("size");
         o.attention_heads = c.integer("attention_heads");
         o.dropout_rate = c.number("dropout_rate", 0.0);
         return std::make_unique<FastSelfAttention>(o, w);
       }},
  };
  return all;
}

}  // namespace

const std::vector<ModuleSpec>& supported_modules() {
  static const std::vector<ModuleSpec> specs = [] {
    std::vector<ModuleSpec> out;
    for (const auto& e : entries()) out.push_back(e.spec);
    return out;
  }();
  return specs;
}

namespace {
// The first precision of `chain` whose layer passes its gate (kBf16Gate, kInt8Gate) on a probe input
// (x ~ N(0, 1), (1, kProbeTokens, E), seeded) against the fp32 reference, else fp32. Weights that make
// attention very peaked (logits of tens), or a LayerNorm that divides out a nearly cancelling scale
// (HyperMixing with one hidden unit), amplify rounding beyond the gate; this catches it for the
// layer's own weights.
std::unique_ptr<Layer> gated_precision(const Entry& e, const Config& c, const StateDict& weights,
                                       const LinearOptions& linear, const std::vector<Precision>& chain) {
  const std::unique_ptr<Layer> reference = e.build(c, weights, {Precision::kFp32, GemmBackend::kReference});
  constexpr int64_t kProbeTokens = 16;
  Tensor x{Shape{1, kProbeTokens, reference->d_model()}};
  std::mt19937 gen(20261207);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(gen);
  Tensor want;
  try {
    want = reference->forward(x);
  } catch (const Error&) {  // a configuration that cannot take the probe (e.g. max_length < 16): fp32
  }
  for (const Precision p : chain) {
    if (want.empty()) break;
    LinearOptions o = linear;
    o.precision = p;
    std::unique_ptr<Layer> candidate = e.build(c, weights, o);
    if (scaled_error(candidate->forward(x), want) <= precision_gate(p)) return candidate;
  }
  LinearOptions fp32 = linear;
  fp32.precision = Precision::kFp32;
  return e.build(c, weights, fp32);
}
}  // namespace

std::unique_ptr<Layer> make_layer(const std::string& module, const std::string& config, const StateDict& weights,
                                  const LinearOptions& linear) {
  for (const auto& e : entries()) {
    if (e.spec.module != module) continue;
    const Config c(module, config, e.spec.options);
    if (linear.backend == GemmBackend::kReference || linear.precision == Precision::kFp32 ||
        linear.precision == Precision::kBf16)
      return e.build(c, weights, linear);
    // auto and int8 are gated on the layer's own weights (resolve_precision first: a CPU without
    // the arithmetic is an error for int8, fp32 for auto).
    const Precision p = resolve_precision(linear.precision);
    if (p == Precision::kFp32) return e.build(c, weights, linear);
    std::vector<Precision> chain{p};
    if (p == Precision::kInt8 && resolve_precision(Precision::kAuto) == Precision::kBf16)
      chain.push_back(Precision::kBf16);
    return gated_precision(e, c, weights, linear, chain);
  }
  std::string list;
  for (const auto& e : entries()) list += "\n  " + e.spec.module + " (" + e.spec.family + ")";
  fail("make_layer: module: unknown or not a sequence layer: '", module, "'; supported:", list);
}

std::unique_ptr<Layer> load_layer(const std::string& path, const LinearOptions& linear) {
  return load_layer(SafetensorsFile(path), linear);
}

std::unique_ptr<Layer> load_layer(const SafetensorsFile& f, const LinearOptions& linear, StateDict* weights) {
  const auto& meta = f.metadata();
  for (const char* key : {"module", "config"})
    check(meta.count(key) != 0, "load_layer: ", f.path(), ": __metadata__ has no '", key,
          "' (a self-describing checkpoint stores the upstream module and its constructor arguments)");
  const std::string prefix = meta.count("call") ? "param." : "";
  const StateDict sd = StateDict::from_file(f, prefix);
  if (weights) *weights = sd;
  return make_layer(meta.at("module"), meta.at("config"), sd, linear);
}

}  // namespace tokenmix
