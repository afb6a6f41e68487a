// Reference-case replay for speechbrain.nnet.hypermixing.HyperMixing.
#include "cases/families.h"
#include "tokenmix/layers/hypermixing.h"

namespace tokenmix::cases {

namespace {

std::unique_ptr<HyperMixing> build(const Case& c) {
  HyperMixingOptions o;
  o.input_output_dim = config_int(c, "input_output_dim", 0);
  o.hypernet_size = config_int(c, "hypernet_size", 0);
  o.tied = config_bool(c, "tied", false);
  o.num_heads = config_int(c, "num_heads", 1);
  o.fix_tm_hidden_size = config_bool(c, "fix_tm_hidden_size", false);
  o.max_length = config_int(c, "max_length", 3000);
  return std::make_unique<HyperMixing>(o, params(c));
}

// forward(query, key, value, key_padding_mask) -> [output, attn_weights]; key and value are ignored,
// as upstream.
Outputs run(const Case& c) {
  const auto layer = build(c);
  const auto& args = call_field(c, c.call, "args");
  const auto& returns = call_field(c, c.call, "returns");
  check(returns.is_array() && !returns.empty(), c.file.path(), ": case call: returns: expected a list of names, got ",
        returns.dump());
  const nlohmann::json* kpm = call_field_opt(c, args, "key_padding_mask");
  Tensor attn;
  Outputs out;
  out[call_string(c, returns[0], "returns entry")] = layer->forward(
      resolve_tensor(c, call_field(c, args, "query")), resolve_mask(c, kpm ? *kpm : nlohmann::json()), &attn);
  if (returns.size() > 1) out[call_string(c, returns[1], "returns entry")] = attn;
  return out;
}

}  // namespace

CaseFamily hypermixing_family() {
  return {"hypermixing",
          {"speechbrain.nnet.hypermixing.HyperMixing"},
          [](const std::string& name, const Case&) {
            // attn_weights are upstream's dummy zeros: exact.
            return name == "out.attn_weights" ? Tolerance{0, 0} : Tolerance{2e-5, 1e-4};
          },
          run,
          [](const Case& c) -> std::unique_ptr<Layer> { return build(c); }};
}

}  // namespace tokenmix::cases
