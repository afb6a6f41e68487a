// tokenmix/layers/registry.h: build the layer a checkpoint describes, from the upstream module's
// qualified class name, its constructor arguments and its state_dict.
//
// A self-describing checkpoint is one safetensors file holding the upstream state_dict under its own
// keys and, in __metadata__, "module" (the qualified class name, e.g.
// "espnet2.asr.state_spaces.attention.MultiHeadedAttention") and "config" (the constructor keyword
// arguments as a JSON object, e.g. {"n_feat": 256, "n_head": 4}). The reference cases have the same
// shape with the state_dict under the prefix "param.".
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/precision.h"
#include "tokenmix/streaming/stream.h"

namespace tokenmix {

// One supported upstream module.
struct ModuleSpec {
  std::string module;                // qualified class name
  std::string family;                // "espnet_mha", "continual", "hypermixing", "primer_ez", "fastformer"
  std::vector<std::string> options;  // constructor arguments make_layer reads (every other key is refused)
  std::string stream_options;        // which StreamOptions its streams take, e.g. "left_context"
};

// Every module make_layer builds, in a fixed order.
const std::vector<ModuleSpec>& supported_modules();

// The layer of upstream class `module`, constructed with config (a JSON object of constructor
// keyword arguments; absent ones take the upstream defaults) and weights (upstream state_dict keys).
// Throws Error "make_layer: ..." naming the module when it is not supported (listing the supported
// ones), the config when it is not a JSON object, an option when it is unknown or of the wrong type,
// and the layer's own errors for bad values or weights. linear: the precision and GEMM backend of its
// projections (kernels/precision.h; precision auto resolves per CPU; an unsupported one throws).
std::unique_ptr<Layer> make_layer(const std::string& module, const std::string& config,
                                  const StateDict& weights, const LinearOptions& linear = {});

// make_layer from one self-describing checkpoint file: module and config from its __metadata__, the
// weights from its tensors (from the "param." tensors when the file is a reference case, i.e. its
// metadata has a "call"). Throws Error naming the file when it cannot be read or lacks module/config.
std::unique_ptr<Layer> load_layer(const std::string& path, const LinearOptions& linear = {});
// The same from an open file; when weights is non-null it receives the state_dict the layer was built
// from (as StateDict::from_file reads it: views of the file's mapping, BF16 kept as bfloat16).
std::unique_ptr<Layer> load_layer(const SafetensorsFile& file, const LinearOptions& linear,
                                  StateDict* weights = nullptr);

}  // namespace tokenmix
