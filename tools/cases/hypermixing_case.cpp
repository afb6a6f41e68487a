// Reference-case replay for speechbrain.nnet.hypermixing.HyperMixing.
#include "cases/families.h"
#include "tokenmix/layers/hypermixing.h"

namespace tokenmix::cases {

namespace {

// forward(query, key, value, key_padding_mask) -> [output, attn_weights]; key and value are ignored,
// as upstream.
Outputs run(const Case& c) {
  const auto layer = build_as<HyperMixing>(c);
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
          registry_modules("hypermixing"),
          [](const std::string& name, const Case&) {
            // attn_weights are upstream's dummy zeros: exact.
            return name == "out.attn_weights" ? Tolerance{0, 0} : Tolerance{2e-5, 1e-4};
          },
          run,
          build_layer};
}

}  // namespace tokenmix::cases
