// Reference-case replay for espnet2.asr.state_spaces.attention.MultiHeadedAttention.
#include "cases/families.h"
#include "tokenmix/layers/espnet_mha.h"

namespace tokenmix::cases {

namespace {

std::unique_ptr<EspnetMultiHeadedAttention> build(const Case& c) {
  return std::make_unique<EspnetMultiHeadedAttention>(config_int(c, "n_feat", 0), config_int(c, "n_head", 0),
                                                      params(c));
}

Outputs run(const Case& c) {
  const auto layer = build(c);
  Outputs out;
  if (c.call.is_object()) {  // forward(query, memory, mask)
    const auto& args = c.call.at("args");
    Tensor attn;
    out[c.call.at("returns").at(0).get<std::string>()] =
        layer->forward(resolve_tensor(c, args.at("query")), resolve_tensor(c, args.value("memory", nlohmann::json())),
                       resolve_mask(c, args.value("mask", nlohmann::json())), &attn);
    if (c.call.contains("attrs_after")) out[c.call["attrs_after"].at("attn").get<std::string>()] = attn;
    return out;
  }
  // step sequence: stack step outputs (and attn) on axis 0.
  std::vector<Tensor> ys, attns;
  for (const auto& step : c.call) {
    const auto& args = step.at("args");
    Tensor attn;
    ys.push_back(layer->step(resolve_tensor(c, args.at("query")), resolve_tensor(c, args.value("memory", nlohmann::json())),
                             resolve_mask(c, args.value("mask", nlohmann::json())), &attn));
    attns.push_back(attn);
  }
  out["out.steps"] = stack(ys);
  if (c.file.contains("out.step_attn")) out["out.step_attn"] = stack(attns);
  return out;
}

}  // namespace

CaseFamily espnet_mha_family() {
  return {"espnet_mha",
          {"espnet2.asr.state_spaces.attention.MultiHeadedAttention"},
          [](const std::string&, const Case&) { return Tolerance{1e-5, 1e-5}; },
          run,
          [](const Case& c) -> std::unique_ptr<Layer> { return build(c); }};
}

}  // namespace tokenmix::cases
