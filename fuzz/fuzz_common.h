// fuzz/fuzz_common.h: helpers shared by the libFuzzer harnesses.
//
// Every harness feeds one input as a file (the readers take paths) and accepts tokenmix::Error as
// the only way to fail: any other exception escapes LLVMFuzzerTestOneInput and libFuzzer reports it
// as a crash, as it does sanitizer reports, hangs and allocations over -malloc_limit_mb.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cases/case.h"
#include "tokenmix/io/safetensors.h"
#include "tokenmix/streaming/stream.h"

namespace tokenmix::fuzz {

// Writes the input to a file private to this process and returns its path.
inline std::string write_input(const uint8_t* data, size_t size) {
  static const std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir ? dir : "/tmp") + "/tokenmix_fuzz_input_" + std::to_string(::getpid()) + ".safetensors";
  }();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// Reads every element, so that the sanitizers see any out-of-bounds view.
inline float touch(const Tensor& t) {
  float s = 0.f;
  for (const float v : t) s += v;
  return s;
}

// A small deterministic (B, T, E) input.
inline Tensor input(int64_t B, int64_t T, int64_t E, uint32_t seed) {
  Tensor x{Shape{B, T, E}};
  for (auto& v : x) {
    seed = seed * 1664525u + 1013904223u;
    v = static_cast<float>(static_cast<int32_t>(seed >> 8) % 2000) / 1000.f - 1.f;
  }
  return x;
}

// One reference case per streaming layer kind (KV cache with and without causal convolutions,
// both windowed streams, both continual streams), with the stream options the harnesses use.
struct ReferenceLayer {
  std::string name;
  std::unique_ptr<Layer> layer;
  StreamOptions options;
};

inline std::vector<ReferenceLayer> reference_layers() {
  const std::string ref = TOKENMIX_REFERENCE_DIR;
  const std::pair<const char*, StreamOptions> picks[] = {
      {"espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors", {3, 0, -1}},
      {"primer_ez/primer_mdha_d16_h4_s3_b1_causal.safetensors", {3, 0, -1}},
      {"fastformer/fastformer_nomask_E32_H4_B3_T17.safetensors", {0, 3, 1}},
      {"hypermixing/hypermixing_e32_h4_b3_t33.safetensors", {0, 3, -1}},
      {"continual/continual_so_stream_e16_h2_l4_b2_eds.safetensors", {}},
      {"continual/continual_retro_stream_e16_h4_l7_b2.safetensors", {}},
  };
  std::vector<ReferenceLayer> out;
  for (const auto& [file, options] : picks) {
    const SafetensorsFile f(ref + "/" + file);
    const cases::Case c = cases::parse_case(f);
    out.push_back({file, cases::family_for(c.module).build_layer(c), options});
  }
  return out;
}

}  // namespace tokenmix::fuzz
