// tools/cases/case.h: replaying reference cases (tests/data/reference/README.md describes the format).
//
// A case file holds param.* (a state_dict), in.* (inputs), out.* (expected outputs) and metadata
// module / config / call. Each layer family registers a CaseFamily that builds the layer from
// module + config + params and replays call, producing every out.* tensor the case defines. The CLI
// (`tokenmix run`) and the parity tests both go through run_case().
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenmix/io/safetensors.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/layers/registry.h"
#include "tokenmix/streaming/stream.h"

namespace tokenmix::cases {

// Outputs by their out.* name. Tensors are compared by element order (a 5-D reference tensor is
// produced flattened to 4-D); the stored dims are used when writing.
using Outputs = std::map<std::string, Tensor>;

// An output passes when every element is within atol + rtol * |expected| + scale * max |expected|.
// scale is the reduced-precision gate (precision_gate(), kernels/precision.h); 0 for fp32.
struct Tolerance {
  double atol = 1e-5, rtol = 1e-5, scale = 0;
};

// Everything a family needs from a case file, with the metadata parsed.
struct Case {
  const SafetensorsFile& file;
  std::string module;
  nlohmann::json config;  // constructor kwargs
  nlohmann::json call;    // object or list of calls
  LinearOptions linear = {};  // how the replayed layer's projections run (tokenmix run --precision)
};

struct CaseFamily {
  std::string family;                // "espnet_mha"
  std::vector<std::string> modules;  // metadata module values it handles
  // Parity tolerance for an out.* name (the family SPEC's suggested tolerance).
  std::function<Tolerance(const std::string& out_name, const Case&)> tolerance;
  // Replays the case; returns every out.* tensor it defines. Throws Error on bad input.
  std::function<Outputs(const Case&)> run;
  // Builds the layer behind the unified Layer/Stream API (null when the module is not a sequence
  // layer, e.g. a stand-alone convolution).
  std::function<std::unique_ptr<Layer>(const Case&)> build_layer;
  // Optional: out.* names the family's SPEC marks informational (e.g. continual out.final_state.*).
  // They are compared when the runner produces them and skipped (not a failure) when it does not.
  std::function<bool(const std::string& out_name)> optional = nullptr;
};

// Every registered family (registry.cpp).
const std::vector<CaseFamily>& families();
// The family handling module; throws Error "unknown module '<m>'; supported: ..." when none does.
const CaseFamily& family_for(const std::string& module);

// One output's comparison against the stored expectation.
struct Comparison {
  std::string name;
  double max_abs = 0, max_rel = 0;  // rel = |a - e| / max(|e|, 1e-6); NaN when either has NaN
  bool pass = false;                // every element within atol + rtol * |e| (and no shape mismatch)
  std::string problem;              // non-empty when the output is missing or mis-sized
};

struct CaseResult {
  std::string path, module, family;
  Outputs outputs;
  std::vector<Comparison> comparisons;  // empty when the case holds no out.* tensors
  bool pass() const;
};

// Parses metadata (module, config, call); throws Error naming the file when absent or not JSON.
Case parse_case(const SafetensorsFile& file);
// Runs the case and compares against its out.* tensors, with the family's tolerance or, where
// atol / rtol are >= 0, with those instead. Throws Error on bad input.
// linear: how the layer's projections run; with bf16 each output's tolerance gains precision_gate().
CaseResult run_case(const SafetensorsFile& file, double atol = -1, double rtol = -1, const LinearOptions& linear = {});
// Writes the outputs under their out.* names, with the stored dims of the case's own tensors.
void write_outputs(const CaseResult& result, const SafetensorsFile& file, const std::string& path);

// Helpers for family runners.
// Resolves an argument value of call: null -> empty tensor; "in.x" -> tensor; "in.x[:, i, :]" or
// "in.x[:, :i+1, :]" style slices on one axis; {"axis", "index"} / {"axis", "start", "stop"} objects.
Tensor resolve_tensor(const Case& c, const nlohmann::json& arg);
Mask resolve_mask(const Case& c, const nlohmann::json& arg);
// Tensor along axis `axis` of t, indices [start, stop) (or a single index, dropping the axis).
Tensor slice(const Tensor& t, int axis, int64_t start, int64_t stop);
Tensor select(const Tensor& t, int axis, int64_t index);
// Stacks equally shaped tensors along a new leading axis.
Tensor stack(const std::vector<Tensor>& parts);
// Call metadata, read strictly: every accessor throws Error "<path>: case call: <what>: expected
// <kind>, got <json>" instead of letting a JSON type or key error escape.
// obj[key] (obj must be an object holding key).
const nlohmann::json& call_field(const Case& c, const nlohmann::json& obj, const char* key);
// obj[key], or nullptr when obj has no key or it is null (obj must be an object).
const nlohmann::json* call_field_opt(const Case& c, const nlohmann::json& obj, const char* key);
// v as a string / an integer that fits int64 / the list of calls (an object is a list of one).
std::string call_string(const Case& c, const nlohmann::json& v, const char* what);
int64_t call_int(const Case& c, const nlohmann::json& v, const char* what);
// Parses a whole decimal integer (e.g. a number in a tensor name or a metadata value); throws
// Error "<path>: <what>: expected an integer, got '<s>'" otherwise.
int64_t parse_int(const Case& c, const std::string& s, const char* what);
// config[key] as an integer with a default when absent; throws Error on a wrong type (the layers'
// configs are read by the library's registry; this serves the stand-alone convolutions).
int64_t config_int(const Case& c, const std::string& key, int64_t fallback);
// The case's param.* tensors as a state_dict (keys without the prefix).
StateDict params(const Case& c);
// The modules of the library's registry (supported_modules()) of one family.
std::vector<std::string> registry_modules(const std::string& family);
// The case's layer from the library's registry (make_layer with module, config, params and c.linear).
std::unique_ptr<Layer> build_layer(const Case& c);
// build_layer as the concrete class L the family's call replay needs.
template <typename L>
std::unique_ptr<L> build_as(const Case& c) {
  std::unique_ptr<Layer> layer = build_layer(c);
  L* concrete = dynamic_cast<L*>(layer.get());
  check(concrete != nullptr, c.file.path(), ": module '", c.module, "' built a ", layer->name(), " layer");
  layer.release();
  return std::unique_ptr<L>(concrete);
}

}  // namespace tokenmix::cases
