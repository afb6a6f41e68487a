// Reference-case replay for labml.ai's MultiHeadAttention and the Primer-EZ family
// (tests/data/reference/primer_ez/SPEC.md).
#include "cases/families.h"
#include "tokenmix/layers/primer_ez.h"

namespace tokenmix::cases {

namespace {

const std::string kPrimer = "labml_nn.transformers.primer_ez.";

// Stand-alone convolution modules.
const std::map<std::string, QkvConv>& conv_modules() {
  static const std::map<std::string, QkvConv> m = {
      {kPrimer + "SpatialDepthWiseConvolution", QkvConv::kPerChannel},
      {kPrimer + "variations.SpatialDepthWiseSharedConvolution", QkvConv::kShared},
      {kPrimer + "variations.SpatialDepthWisePerHeadConvolution", QkvConv::kPerHead},
      {kPrimer + "efficient.SpatialDepthWiseConvolution", QkvConv::kEfficient},
  };
  return m;
}

Outputs run(const Case& c) {
  check(c.call.is_object(), c.file.path(), ": case call: expected a single forward call");
  const auto& args = call_field(c, c.call, "args");
  const nlohmann::json* ret = call_field_opt(c, c.call, "returns");
  const std::string returns = ret ? call_string(c, *ret, "returns") : std::string("out.y");
  const auto optional = [&](const char* key) {
    const nlohmann::json* v = call_field_opt(c, args, key);
    return v ? *v : nlohmann::json();
  };
  Outputs out;
  if (!conv_modules().count(c.module) && c.module != kPrimer + "SquaredReLU") {  // an attention module
    const auto layer = build_as<LabmlMultiHeadAttention>(c);
    const Tensor q = resolve_tensor(c, call_field(c, args, "query")), k = resolve_tensor(c, call_field(c, args, "key")),
                 v = resolve_tensor(c, call_field(c, args, "value"));
    Tensor attn;
    out[returns] = layer->forward(q, k, v, resolve_mask(c, optional("mask")), &attn);
    out["out.attn"] = attn;
    using P = LabmlMultiHeadAttention::Projection;
    out["out.q"] = layer->project(P::kQuery, q);
    out["out.k"] = layer->project(P::kKey, k);
    out["out.v"] = layer->project(P::kValue, v);
  } else if (conv_modules().count(c.module)) {
    const SpatialDepthWiseConvolution conv(conv_modules().at(c.module), config_int(c, "heads", 0),
                                           config_int(c, "d_k", 0), config_int(c, "kernel_size", 3), params(c));
    out[returns] = conv.forward(resolve_tensor(c, call_field(c, args, "x")));
  } else {  // SquaredReLU
    out[returns] = squared_relu(resolve_tensor(c, call_field(c, args, "x")));
  }
  return out;
}

}  // namespace

CaseFamily primer_ez_family() {
  std::vector<std::string> modules = registry_modules("primer_ez");
  for (const auto& [m, _] : conv_modules()) modules.push_back(m);
  modules.push_back(kPrimer + "SquaredReLU");
  return {"primer_ez", modules, [](const std::string&, const Case&) { return Tolerance{1e-5, 1e-5}; }, run,
          [](const Case& c) -> std::unique_ptr<Layer> {
            if (conv_modules().count(c.module) || c.module == kPrimer + "SquaredReLU") return nullptr;
            return build_layer(c);
          }};
}

}  // namespace tokenmix::cases
