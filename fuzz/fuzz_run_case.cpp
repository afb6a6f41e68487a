// libFuzzer harness: an arbitrary file replayed as a reference case (what `tokenmix run FILE` does).
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tokenmix;
  const std::string path = fuzz::write_input(data, size);
  try {
    const SafetensorsFile f(path);
    const cases::CaseResult r = cases::run_case(f);
    for (const auto& [name, t] : r.outputs) fuzz::touch(t);
  } catch (const Error&) {
  }
  return 0;
}
