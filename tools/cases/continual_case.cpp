// Reference-case replay for continual-inference's SingleOutputMultiheadAttention and
// RetroactiveMultiheadAttention (tests/data/reference/continual/SPEC.md section 8): forward cases,
// and stream cases as a list of forward_steps / forward_step (with update_state) / clean_state calls.
// out.winfwd.<t> is produced as forward() on the L-token window ending at token t.
// out.final_state.* is informational (tokenmix keeps a different, numerically stable state) and is
// not produced.
#include "cases/families.h"
#include "tokenmix/layers/continual_mha.h"

namespace tokenmix::cases {

namespace {

const char* kRetroactive = "continual.multihead_attention.retroactive_mha.RetroactiveMultiheadAttention";

int64_t meta_int(const Case& c, const char* key) {
  const auto& meta = c.file.metadata();
  check(meta.count(key) != 0, c.file.path(), ": __metadata__ has no '", key, "'");
  return parse_int(c, meta.at(key), (std::string("__metadata__ '") + key + "'").c_str());
}

// Argument `name` of a call entry, sliced by the entry's "slice" ({"axis", "start", "stop"} or
// {"axis", "index"}); empty when the argument is absent.
Tensor arg(const Case& c, const nlohmann::json& entry, const char* name) {
  const nlohmann::json* a = call_field_opt(c, call_field(c, entry, "args"), name);
  if (!a) return {};
  Tensor t = resolve_tensor(c, *a);
  const nlohmann::json* s = call_field_opt(c, entry, "slice");
  if (!s) return t;
  const int64_t axis = call_int(c, call_field(c, *s, "axis"), "slice axis");
  check(axis >= 0 && axis < t.ndim(), c.file.path(), ": case call: slice axis ", axis, " out of range for shape ",
        t.shape());
  if (const nlohmann::json* index = call_field_opt(c, *s, "index"))
    return select(t, static_cast<int>(axis), call_int(c, *index, "slice index"));
  return slice(t, static_cast<int>(axis), call_int(c, call_field(c, *s, "start"), "slice start"),
               call_int(c, call_field(c, *s, "stop"), "slice stop"));
}

// The out.* name a call's result goes to: returns (a string) or returns[i] (a list).
std::string returned(const Case& c, const nlohmann::json& entry, size_t i) {
  const nlohmann::json& ret = call_field(c, entry, "returns");
  if (ret.is_string() && i == 0) return call_string(c, ret, "returns");
  check(ret.is_array() && ret.size() > i, c.file.path(), ": case call: returns: expected a list of at least ", i + 1,
        " names, got ", ret.dump());
  return call_string(c, ret[i], "returns entry");
}

Outputs run(const Case& c) {
  const auto layer = build_as<ContinualMultiheadAttention>(c);
  ContinualSteps steps(*layer);
  check(c.call.is_array(), c.file.path(), ": case call: expected a list of calls");
  Outputs out;
  std::string first_input;  // the name of the query stream (for out.winfwd.*)
  for (const auto& entry : c.call) {
    const std::string method = call_string(c, call_field(c, entry, "method"), "method");
    if (method == "clean_state") {
      steps.clean_state();
      continue;
    }
    const Tensor q = arg(c, entry, "query"), k = arg(c, entry, "key"), v = arg(c, entry, "value");
    if (method == "forward") {
      Tensor attn;
      const Tensor o = layer->forward(q, k, v, Mask{}, Mask{}, &attn);
      out[returned(c, entry, 0)] = o;
      const nlohmann::json& ret = call_field(c, entry, "returns");
      if (ret.is_array() && ret.size() > 1 && ret[1].is_string()) out[returned(c, entry, 1)] = attn;
      continue;
    }
    bool update = true;
    if (const nlohmann::json* kwargs = call_field_opt(c, entry, "kwargs"))
      if (const nlohmann::json* u = call_field_opt(c, *kwargs, "update_state")) {
        check(u->is_boolean(), c.file.path(), ": case call: update_state: expected a boolean, got ", u->dump());
        update = u->get<bool>();
      }
    Tensor y;
    if (method == "forward_steps")
      y = steps.forward_steps(q, k, v, update);
    else if (method == "forward_step")
      y = steps.forward_step(q, k, v, update);
    else
      fail(c.file.path(), ": case call: unknown method '", method, "'");
    if (call_field(c, entry, "returns").is_string()) {
      if (!y.empty()) out[returned(c, entry, 0)] = y;  // else reported as not produced
    } else {
      check(y.empty(), c.file.path(), ": ", method, " returned an output of shape ", y.shape(),
            " where the reference returned None");
    }
  }
  // out.winfwd.<t>: forward() on the window of L tokens ending at t.
  const int64_t time_axis = meta_int(c, "time_axis");
  check(time_axis >= 0 && time_axis < 3, c.file.path(), ": __metadata__ 'time_axis': expected 0, 1 or 2, got ",
        time_axis);
  const int64_t L = layer->sequence_len();
  const bool qkv = c.file.contains("in.q");
  for (const auto& name : c.file.names()) {
    if (name.rfind("out.winfwd.", 0) != 0) continue;
    const int64_t t = parse_int(c, name.substr(11), "token index of an out.winfwd.<t> tensor");
    check(t >= L - 1 && t < limits::kMaxStreamTokens, c.file.path(), ": ", name, ": expected a token index >= ",
          L - 1, " (sequence_len - 1), got ", t);
    auto window = [&](const char* input) {
      return slice(c.file.tensor(input), static_cast<int>(time_axis), t - L + 1, t + 1);
    };
    out[name] = qkv ? layer->forward(window("in.q"), window("in.k"), window("in.v"), Mask{}, Mask{}, nullptr)
                    : layer->forward(window("in.x"), Tensor{}, Tensor{}, Mask{}, Mask{}, nullptr);
  }
  return out;
}

}  // namespace

CaseFamily continual_family() {
  CaseFamily f{"continual",
               registry_modules("continual"),
               [](const std::string& name, const Case& c) {
                 // SPEC section 8: SingleOutput 1e-5; Retroactive stream outputs (and the window
                 // forwards they equal) atol 2e-5, rtol 1e-5.
                 const bool stream_out = name.rfind("out.o", 0) != 0 && name.rfind("out.attn", 0) != 0;
                 if (c.module == kRetroactive && stream_out) return Tolerance{2e-5, 1e-5};
                 return Tolerance{1e-5, 1e-5};
               },
               run,
               build_layer};
  f.optional = [](const std::string& name) { return name.rfind("out.final_state.", 0) == 0; };
  return f;
}

}  // namespace tokenmix::cases
