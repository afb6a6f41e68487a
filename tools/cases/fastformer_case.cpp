// Reference-case replay for espnet2.asr.layers.fastformer.FastSelfAttention.
#include "cases/families.h"
#include "tokenmix/layers/fastformer.h"

namespace tokenmix::cases {

namespace {

Outputs run(const Case& c) {
  const auto layer = build_as<FastSelfAttention>(c);
  const nlohmann::json* method = c.call.is_object() ? call_field_opt(c, c.call, "method") : nullptr;
  check(method && method->is_string() && method->get<std::string>() == "forward", c.file.path(),
        ": case call: expected one forward call, got ", c.call.dump());
  const auto& args = call_field(c, c.call, "args");
  const auto& returns = call_field(c, c.call, "returns");
  check(returns.is_array() && !returns.empty(), c.file.path(), ": case call: returns: expected a list of names, got ",
        returns.dump());
  const nlohmann::json* mask = call_field_opt(c, args, "mask");
  Outputs out;
  out[call_string(c, returns[0], "returns entry")] = layer->forward_upstream(
      resolve_tensor(c, call_field(c, args, "xs_pad")), resolve_mask(c, mask ? *mask : nlohmann::json()));
  return out;
}

}  // namespace

CaseFamily fastformer_family() {
  return {"fastformer",
          registry_modules("fastformer"),
          [](const std::string&, const Case&) { return Tolerance{1e-5, 1e-5}; },
          run,
          build_layer};
}

}  // namespace tokenmix::cases
