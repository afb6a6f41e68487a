#include "tokenmix/streaming/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "tokenmix/core/checked.h"

namespace tokenmix {

KvCache::KvCache(int64_t batch, int64_t heads, int64_t head_dim, int64_t left_context)
    : heads_(heads), head_dim_(head_dim), left_context_(left_context), k_(std::max<int64_t>(batch, 0)),
      v_(std::max<int64_t>(batch, 0)), cap_(k_.size(), 0), start_(k_.size(), 0), len_(k_.size(), 0) {
  check(batch >= 1, "KvCache: batch: expected >= 1, got ", batch);
  check(heads >= 1, "KvCache: heads: expected >= 1, got ", heads);
  check(head_dim >= 1, "KvCache: head_dim: expected >= 1, got ", head_dim);
  check_range(left_context, 0, limits::kMaxTokens, "KvCache", "left_context");
  mul_checked(heads, head_dim, "KvCache", "width");
}

void KvCache::make_room(int64_t b, int64_t C) {
  const int64_t D = head_dim_;
  // Drop tokens no query of the new chunk can see (only with a left-context limit).
  if (left_context_ > 0) {
    const int64_t keep = std::min(len_[b], left_context_ - 1);
    start_[b] += len_[b] - keep;
    len_[b] = keep;
  }
  const int64_t cap = cap_[b];
  if (start_[b] + len_[b] + C <= cap) return;
  if (len_[b] + C <= cap) {  // compact: move each head's kept tail to the front of its block
    for (auto* buf : {&k_[b], &v_[b]})
      for (int64_t h = 0; h < heads_; ++h) {
        float* block = buf->data() + h * cap * D;
        std::memmove(block, block + start_[b] * D, sizeof(float) * len_[b] * D);
      }
    start_[b] = 0;
    return;
  }
  // Grow: twice what is needed, so compaction stays amortised O(1) per token. With a left-context
  // limit the size is final at once (it depends only on the limit and the chunk size).
  const int64_t new_cap = 2 * ((left_context_ > 0 ? std::max<int64_t>(left_context_ - 1, len_[b]) : len_[b]) + C);
  for (auto* buf : {&k_[b], &v_[b]}) {
    std::vector<float> grown(static_cast<size_t>(numel_checked({heads_, new_cap, D}, "KvCache::append", "cache")));
    if (len_[b] > 0)  // buf may still be empty (data() null): memcpy from null is UB even for 0 bytes
      for (int64_t h = 0; h < heads_; ++h)
        std::memcpy(grown.data() + h * new_cap * D, buf->data() + (h * cap + start_[b]) * D,
                    sizeof(float) * len_[b] * D);
    buf->swap(grown);
  }
  cap_[b] = new_cap;
  start_[b] = 0;
}

void KvCache::append(int64_t b, const float* k, const float* v, int64_t C, int64_t ld) {
  make_room(b, C);
  const int64_t D = head_dim_, cap = cap_[b], first = start_[b] + len_[b];
  for (int64_t h = 0; h < heads_; ++h) {
    float* kd = k_[b].data() + (h * cap + first) * D;
    float* vd = v_[b].data() + (h * cap + first) * D;
    for (int64_t t = 0; t < C; ++t) {
      std::memcpy(kd + t * D, k + t * ld + h * D, sizeof(float) * D);
      std::memcpy(vd + t * D, v + t * ld + h * D, sizeof(float) * D);
    }
  }
  len_[b] += C;
}

void KvCache::reset() {
  for (int64_t b = 0; b < batch(); ++b) reset_row(b);
}

void KvCache::reset_row(int64_t b) {
  check(b >= 0 && b < batch(), "KvCache::reset_row: b: expected 0 <= b < ", batch(), ", got ", b);
  start_[b] = len_[b] = 0;
}

Tensor KvCache::gather(const std::vector<float>& buf, int64_t b, int64_t n) const {
  const int64_t D = head_dim_, E = width();
  Tensor out{Shape{n, E}};
  for (int64_t h = 0; h < heads_; ++h) {
    const float* block = buf.data() + (h * cap_[b] + start_[b] + len_[b] - n) * D;
    for (int64_t t = 0; t < n; ++t) std::memcpy(out.data() + t * E + h * D, block + t * D, sizeof(float) * D);
  }
  return out;
}

int64_t KvCache::visible(int64_t b) const {
  return left_context_ > 0 ? std::min(len_[b], left_context_ - 1) : len_[b];
}

void KvCache::save(SafetensorsWriter& w, const std::string& prefix) const {
  std::vector<int64_t> len(len_.size());
  for (int64_t b = 0; b < batch(); ++b) len[b] = visible(b);
  w.add_int64s(prefix + "length", len);
  for (int64_t b = 0; b < batch(); ++b) {
    if (len[b] == 0) continue;  // safetensors cases avoid zero-size tensors
    w.add(prefix + "key." + std::to_string(b), gather(k_[b], b, len[b]));
    w.add(prefix + "value." + std::to_string(b), gather(v_[b], b, len[b]));
  }
}

KvCache KvCache::restored(const SafetensorsFile& f, const std::string& prefix) const {
  const char* fn = "KvCache::restore";
  const auto len = f.int64s(prefix + "length");
  check(static_cast<int64_t>(len.size()) == batch(), fn, ": ", f.path(), ": '", prefix, "length': expected ",
        batch(), " rows, got ", len.size());
  KvCache c(batch(), heads_, head_dim_, left_context_);
  for (int64_t b = 0; b < batch(); ++b) {
    check(len[b] >= 0 && len[b] <= limits::kMaxStreamTokens, fn, ": ", f.path(), ": '", prefix, "length' row ", b,
          ": expected 0 <= length <= ", limits::kMaxStreamTokens, ", got ", len[b]);
    if (len[b] == 0) continue;
    const std::string kn = prefix + "key." + std::to_string(b), vn = prefix + "value." + std::to_string(b);
    const Tensor k = f.tensor(kn), v = f.tensor(vn);
    check_shape(k, {len[b], width()}, fn, kn.c_str());
    check_shape(v, {len[b], width()}, fn, vn.c_str());
    // Only the tokens a later query can see are kept (a file may hold more: any left_context - 1 + C).
    const int64_t keep = left_context_ > 0 ? std::min(len[b], left_context_ - 1) : len[b];
    const int64_t skip = (len[b] - keep) * width();
    c.append(b, k.data() + skip, v.data() + skip, keep, width());
  }
  return c;
}

}  // namespace tokenmix
