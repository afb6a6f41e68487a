// libFuzzer harness: the safetensors reader and every tensor accessor on an arbitrary file, read from
// disk (mapped) and from memory (SafetensorsFile::from_bytes, as a stream's in-memory state is).
#include "fuzz_common.h"

namespace {

void read_all(const tokenmix::SafetensorsFile& f) {
  using namespace tokenmix;
  for (const auto& [k, v] : f.metadata()) (void)(k.size() + v.size());
  for (const auto& name : f.names()) {
    (void)f.info(name);
    try { fuzz::touch(f.tensor(name)); } catch (const Error&) {}
    try { fuzz::touch(f.tensor_flat(name)); } catch (const Error&) {}
    try {
      const Bf16Tensor b = f.bf16_tensor(name);
      fuzz::touch(b.to_float());
      if (b.shape.ndim() >= 1) fuzz::touch(b.narrow(b.shape[0] / 2, b.shape[0] - b.shape[0] / 2).to_float());
    } catch (const Error&) {}
    try {
      const Mask m = f.mask(name);
      for (const uint8_t b : m) (void)b;
    } catch (const Error&) {}
    try {
      for (const int64_t v : f.int64s(name)) (void)v;
    } catch (const Error&) {}
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmix;
  try {
    read_all(SafetensorsFile(fuzz::write_input(data, size)));
  } catch (const Error&) {
  }
  try {
    read_all(SafetensorsFile::from_bytes(std::vector<uint8_t>(data, data + size)));
  } catch (const Error&) {
  }
  return 0;
}
