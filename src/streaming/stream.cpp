#include "tokenmix/streaming/stream.h"

#include "tokenmix/core/threads.h"

namespace tokenmix {

Tensor Stream::push(const Tensor& chunk) {
  const int64_t tokens = chunk.ndim() >= 2 ? chunk.dim(0) * chunk.dim(1) : chunk.numel();
  const ThreadLimit limit(stream_threads(tokens, parallel_min_tokens()));
  return push_chunk(chunk);
}

void Stream::save(const std::string& path) const {
  SafetensorsWriter w;
  save(w);
  w.write(path);
}

void Stream::restore(const std::string& path) { restore(SafetensorsFile(path)); }

}  // namespace tokenmix
