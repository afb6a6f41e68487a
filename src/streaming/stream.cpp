#include "tokenmix/streaming/stream.h"

#include "tokenmix/core/threads.h"

namespace tokenmix {

Tensor Stream::push(const Tensor& chunk) {
  const int64_t tokens = chunk.ndim() >= 2 ? chunk.dim(0) * chunk.dim(1) : chunk.numel();
  const ThreadLimit limit(stream_threads(tokens, parallel_min_tokens()));
  return push_chunk(chunk);
}

void Stream::save(SafetensorsWriter& w) const {
  w.set_metadata("stream", state_name());
  w.add_int64s("config", state_config());
  save_state(w);
}

void Stream::restore(const SafetensorsFile& f) {
  const std::string name = state_name(), fn = name + "::restore";
  const auto it = f.metadata().find("stream");
  check(it != f.metadata().end() && it->second == name, fn, ": ", f.path(), ": not a ", name, " state file (saved by ",
        it == f.metadata().end() ? std::string("no stream") : it->second, ")");
  check(f.contains("config") && f.info("config").dtype == DType::I64 && f.int64s("config") == state_config(), fn,
        ": ", f.path(), ": 'config' (", state_config_names(), ") does not match this stream");
  restore_state(f);
}

std::vector<uint8_t> Stream::state() const {
  SafetensorsWriter w;
  save(w);
  return w.bytes();
}

void Stream::load_state(const std::vector<uint8_t>& bytes) { restore(SafetensorsFile::from_bytes(bytes, "<state>")); }

void Stream::save(const std::string& path) const {
  SafetensorsWriter w;
  save(w);
  w.write(path);
}

void Stream::restore(const std::string& path) { restore(SafetensorsFile(path)); }

}  // namespace tokenmix
