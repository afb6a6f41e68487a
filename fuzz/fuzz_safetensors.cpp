// libFuzzer harness: the safetensors reader and every tensor accessor on an arbitrary file.
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmix;
  const std::string path = fuzz::write_input(data, size);
  try {
    const SafetensorsFile f(path);
    for (const auto& [k, v] : f.metadata()) (void)(k.size() + v.size());
    for (const auto& name : f.names()) {
      const TensorInfo& in = f.info(name);
      (void)in;
      try { fuzz::touch(f.tensor(name)); } catch (const Error&) {}
      try { fuzz::touch(f.tensor_flat(name)); } catch (const Error&) {}
      try {
        const Mask m = f.mask(name);
        for (const uint8_t b : m) (void)b;
      } catch (const Error&) {}
      try {
        for (const int64_t v : f.int64s(name)) (void)v;
      } catch (const Error&) {}
    }
  } catch (const Error&) {
  }
  return 0;
}
