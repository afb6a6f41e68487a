#include "tokenmix/streaming/stream.h"

namespace tokenmix {

void Stream::save(const std::string& path) const {
  SafetensorsWriter w;
  save(w);
  w.write(path);
}

void Stream::restore(const std::string& path) { restore(SafetensorsFile(path)); }

}  // namespace tokenmix
