// Reference-case replay for espnet2.asr.layers.fastformer.FastSelfAttention.
#include "cases/families.h"
#include "tokenmix/layers/fastformer.h"

namespace tokenmix::cases {

namespace {

std::unique_ptr<FastSelfAttention> build(const Case& c) {
  return std::make_unique<FastSelfAttention>(config_int(c, "size", 0), config_int(c, "attention_heads", 0),
                                             config_double(c, "dropout_rate", 0.0), params(c));
}

Outputs run(const Case& c) {
  const auto layer = build(c);
  check(c.call.is_object() && c.call.value("method", "") == "forward",
        "fastformer case: call: expected one forward call, got ", c.call.dump());
  const auto& args = c.call.at("args");
  Outputs out;
  out[c.call.at("returns").at(0).get<std::string>()] =
      layer->forward_upstream(resolve_tensor(c, args.at("xs_pad")), resolve_mask(c, args.value("mask", nlohmann::json())));
  return out;
}

}  // namespace

CaseFamily fastformer_family() {
  return {"fastformer",
          {"espnet2.asr.layers.fastformer.FastSelfAttention"},
          [](const std::string&, const Case&) { return Tolerance{1e-5, 1e-5}; },
          run,
          [](const Case& c) -> std::unique_ptr<Layer> { return build(c); }};
}

}  // namespace tokenmix::cases
