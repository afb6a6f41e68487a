// libFuzzer harness: an arbitrary file restored into every kind of stream, then a few pushes, a
// reset_row and another push. With TOKENMIX_FUZZ_WRITE_SEEDS=DIR set, it first writes a real saved
// state of each stream into DIR (the seed corpus; fuzz/make_corpus.sh uses it).
#include "fuzz_common.h"

namespace {
std::vector<tokenmix::fuzz::ReferenceLayer> g_layers;
constexpr int64_t kBatch = 2;

void write_seeds(const std::string& dir) {
  using namespace tokenmix;
  for (const auto& l : g_layers) {
    auto s = l.layer->open_stream(kBatch, l.options);
    s->push(fuzz::input(kBatch, 5, l.layer->d_model(), 3));
    s->reset_row(1);
    s->push(fuzz::input(kBatch, 2, l.layer->d_model(), 4));
    std::string name = l.name;
    for (auto& ch : name) ch = ch == '/' ? '_' : ch;
    s->save(dir + "/state_" + name);
  }
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_layers = tokenmix::fuzz::reference_layers();
  if (const char* dir = std::getenv("TOKENMIX_FUZZ_WRITE_SEEDS")) write_seeds(dir);
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
  for (const auto& l : g_layers) {
    const int64_t E = l.layer->d_model();
    auto s = l.layer->open_stream(kBatch, l.options);
    try {
      s->restore(*f);
    } catch (const Error&) {
      continue;
    }
    fuzz::touch(s->push(fuzz::input(kBatch, 1, E, 5)));
    fuzz::touch(s->push(fuzz::input(kBatch, 3, E, 6)));
    s->reset_row(kBatch - 1);
    fuzz::touch(s->push(fuzz::input(kBatch, 2, E, 7)));
  }
  return 0;
}
