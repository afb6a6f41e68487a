#include "tokenmix/streaming/kv_cache.h"

#include <algorithm>
#include <cstring>

namespace tokenmix {

KvCache::KvCache(int64_t batch, int64_t width, int64_t left_context)
    : width_(width), left_context_(left_context), k_(batch), v_(batch), start_(batch, 0),
      len_(batch, 0), pos_(batch, 0) {
  check(batch >= 1, "KvCache: batch: expected >= 1, got ", batch);
  check(width >= 1, "KvCache: width: expected >= 1, got ", width);
  check(left_context >= 0, "KvCache: left_context: expected >= 0, got ", left_context);
}

void KvCache::make_room(int64_t b, int64_t C) {
  // Drop tokens no query of the new chunk can see (only with a left-context limit).
  if (left_context_ > 0) {
    const int64_t keep = std::min(len_[b], left_context_ - 1);
    start_[b] += len_[b] - keep;
    len_[b] = keep;
  }
  const int64_t cap = static_cast<int64_t>(k_[b].size()) / width_;
  if (start_[b] + len_[b] + C <= cap) return;
  if (len_[b] + C <= cap) {  // compact: move the kept tail to the front
    std::memmove(k_[b].data(), k_[b].data() + start_[b] * width_, sizeof(float) * len_[b] * width_);
    std::memmove(v_[b].data(), v_[b].data() + start_[b] * width_, sizeof(float) * len_[b] * width_);
    start_[b] = 0;
    return;
  }
  // Grow: twice what is needed, so compaction stays amortised O(1) per token. With a left-context
  // limit the size is final at once (it depends only on the limit and the chunk size).
  const int64_t new_cap = 2 * ((left_context_ > 0 ? std::max<int64_t>(left_context_ - 1, len_[b]) : len_[b]) + C);
  std::vector<float> nk(new_cap * width_), nv(new_cap * width_);
  if (len_[b] > 0) {  // k_[b] may still be empty (data() null): memcpy from null is UB even for 0 bytes
    std::memcpy(nk.data(), k_[b].data() + start_[b] * width_, sizeof(float) * len_[b] * width_);
    std::memcpy(nv.data(), v_[b].data() + start_[b] * width_, sizeof(float) * len_[b] * width_);
  }
  k_[b].swap(nk);
  v_[b].swap(nv);
  start_[b] = 0;
}

void KvCache::append(int64_t b, const float* k, const float* v, int64_t C, int64_t ld) {
  make_room(b, C);
  float* kd = k_[b].data() + (start_[b] + len_[b]) * width_;
  float* vd = v_[b].data() + (start_[b] + len_[b]) * width_;
  for (int64_t t = 0; t < C; ++t) {
    std::memcpy(kd + t * width_, k + t * ld, sizeof(float) * width_);
    std::memcpy(vd + t * width_, v + t * ld, sizeof(float) * width_);
  }
  len_[b] += C;
  pos_[b] += C;
}

void KvCache::reset() {
  for (int64_t b = 0; b < batch(); ++b) reset_row(b);
}

void KvCache::reset_row(int64_t b) {
  check(b >= 0 && b < batch(), "KvCache::reset_row: b: expected 0 <= b < ", batch(), ", got ", b);
  start_[b] = len_[b] = pos_[b] = 0;
}

void KvCache::save(SafetensorsWriter& w, const std::string& prefix) const {
  w.add_int64s(prefix + "position", pos_);
  w.add_int64s(prefix + "length", len_);
  for (int64_t b = 0; b < batch(); ++b) {
    if (len_[b] == 0) continue;  // safetensors cases avoid zero-size tensors
    w.add(prefix + "key." + std::to_string(b),
          Tensor::view(Shape{len_[b], width_}, const_cast<float*>(keys(b))));
    w.add(prefix + "value." + std::to_string(b),
          Tensor::view(Shape{len_[b], width_}, const_cast<float*>(values(b))));
  }
}

void KvCache::restore(const SafetensorsFile& f, const std::string& prefix) {
  const char* fn = "KvCache::restore";
  const auto pos = f.int64s(prefix + "position");
  const auto len = f.int64s(prefix + "length");
  check(static_cast<int64_t>(pos.size()) == batch() && static_cast<int64_t>(len.size()) == batch(), fn,
        ": ", f.path(), ": '", prefix, "position'/'length': expected ", batch(), " rows, got ",
        pos.size(), "/", len.size());
  for (int64_t b = 0; b < batch(); ++b) {
    check(len[b] >= 0 && pos[b] >= len[b], fn, ": ", f.path(), ": row ", b, ": length ", len[b],
          " and position ", pos[b], " are inconsistent");
    reset_row(b);
    if (len[b] == 0) continue;
    const std::string kn = prefix + "key." + std::to_string(b), vn = prefix + "value." + std::to_string(b);
    const Tensor k = f.tensor(kn), v = f.tensor(vn);
    check_shape(k, {len[b], width_}, fn, kn.c_str());
    check_shape(v, {len[b], width_}, fn, vn.c_str());
    append(b, k.data(), v.data(), len[b], width_);
    pos_[b] = pos[b];
  }
}

}  // namespace tokenmix
