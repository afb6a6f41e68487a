// libFuzzer harness: an arbitrary file as the state_dict ("param.*" tensors) of every layer family.
// Each reference module is built with its own config and the fuzzed weights, then run forward.
#include "fuzz_common.h"

namespace {

struct Module {
  tokenmix::cases::Case meta;  // module and config of a reference case (its file is not used)
  const tokenmix::cases::CaseFamily* family;
};

std::vector<std::unique_ptr<tokenmix::SafetensorsFile>> g_files;
std::vector<Module> g_modules;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace tokenmix;
  const std::string ref = TOKENMIX_REFERENCE_DIR;
  for (const char* file : {"espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors",
                           "fastformer/fastformer_nomask_E32_H4_B3_T17.safetensors",
                           "hypermixing/hypermixing_e32_h4_tied_b3_t7.safetensors",
                           "hypermixing/hypermixing_e16_h1_b2_tmax.safetensors",
                           "continual/continual_so_fwd_e16_h2_l7_b2.safetensors",
                           "continual/continual_retro_fwd_e16_h2_l7_b2.safetensors",
                           "primer_ez/primer_mdha_d16_h4_s3_b1_causal.safetensors",
                           "primer_ez/primer_mdpha_d16_h2_s9_b3_none.safetensors",
                           "primer_ez/primer_mdhaeff_d16_h2_s9_b3_none.safetensors"}) {
    g_files.push_back(std::make_unique<SafetensorsFile>(ref + "/" + file));
    const cases::Case c = cases::parse_case(*g_files.back());
    g_modules.push_back({c, &cases::family_for(c.module)});
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmix;
  const std::string path = fuzz::write_input(data, size);
  std::unique_ptr<SafetensorsFile> f;
  try {
    f = std::make_unique<SafetensorsFile>(path);
  } catch (const Error&) {
    return 0;
  }
  for (const Module& m : g_modules) {
    try {
      const cases::Case c{*f, m.meta.module, m.meta.config, m.meta.call};
      const auto layer = m.family->build_layer(c);
      fuzz::touch(layer->forward(fuzz::input(2, 3, layer->d_model(), 1)));
    } catch (const Error&) {
    }
  }
  return 0;
}
