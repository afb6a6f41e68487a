// Reference-case replay for espnet2.asr.state_spaces.attention.MultiHeadedAttention.
#include "cases/families.h"
#include "tokenmix/layers/espnet_mha.h"

namespace tokenmix::cases {

namespace {

Outputs run(const Case& c) {
  const auto layer = build_as<EspnetMultiHeadedAttention>(c);
  Outputs out;
  const auto optional = [&](const nlohmann::json& args, const char* key) {
    const nlohmann::json* v = call_field_opt(c, args, key);
    return v ? *v : nlohmann::json();
  };
  if (c.call.is_object()) {  // forward(query, memory, mask)
    const auto& args = call_field(c, c.call, "args");
    const auto& returns = call_field(c, c.call, "returns");
    check(returns.is_array() && !returns.empty(), c.file.path(), ": case call: returns: expected a list of names, got ",
          returns.dump());
    Tensor attn;
    out[call_string(c, returns[0], "returns entry")] =
        layer->forward(resolve_tensor(c, call_field(c, args, "query")), resolve_tensor(c, optional(args, "memory")),
                       resolve_mask(c, optional(args, "mask")), &attn);
    if (const nlohmann::json* after = call_field_opt(c, c.call, "attrs_after"))
      out[call_string(c, call_field(c, *after, "attn"), "attrs_after.attn")] = attn;
    return out;
  }
  check(c.call.is_array() && !c.call.empty(), c.file.path(), ": case call: expected a call or a list of step calls");
  // step sequence: stack step outputs (and attn) on axis 0.
  std::vector<Tensor> ys, attns;
  for (const auto& step : c.call) {
    const auto& args = call_field(c, step, "args");
    Tensor attn;
    ys.push_back(layer->step(resolve_tensor(c, call_field(c, args, "query")),
                             resolve_tensor(c, optional(args, "memory")), resolve_mask(c, optional(args, "mask")),
                             &attn));
    attns.push_back(attn);
  }
  out["out.steps"] = stack(ys);
  if (c.file.contains("out.step_attn")) out["out.step_attn"] = stack(attns);
  return out;
}

}  // namespace

CaseFamily espnet_mha_family() {
  return {"espnet_mha",
          registry_modules("espnet_mha"),
          [](const std::string&, const Case&) { return Tolerance{1e-5, 1e-5}; },
          run,
          build_layer};
}

}  // namespace tokenmix::cases
