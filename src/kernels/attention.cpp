#include "tokenmix/kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tokenmix/kernels/linear.h"

namespace tokenmix {

namespace {

constexpr int64_t kQueryTile = 64;

inline bool allowed(const AttentionShape& s, const AttentionMask* mask, int64_t b, int64_t i,
                    int64_t j) {
  if (s.causal) {
    const int64_t qpos = i + s.query_offset;
    if (j > qpos) return false;
    if (s.left_context > 0 && qpos - j >= s.left_context) return false;
  }
  if (mask) {
    const uint8_t m =
        mask->data[b * mask->batch_stride + i * mask->query_stride + j * mask->key_stride] != 0;
    if (m != (mask->keep_value != 0)) return false;
  }
  return true;
}

// Key range [lo, hi) that can be kept for query rows [i0, i1) under the causal band.
inline void key_range(const AttentionShape& s, int64_t i0, int64_t i1, int64_t* lo, int64_t* hi) {
  *lo = 0;
  *hi = s.k_len;
  if (!s.causal) return;
  *hi = std::clamp<int64_t>(i1 - 1 + s.query_offset + 1, 0, s.k_len);
  if (s.left_context > 0) *lo = std::clamp<int64_t>(i0 + s.query_offset - s.left_context + 1, 0, s.k_len);
}

// Per-thread score tile, grown only (attention_reserve() pre-grows it for streams).
std::vector<float>& score_scratch() {
  thread_local std::vector<float> scores;
  return scores;
}

}  // namespace

void attention_reserve(int64_t q_len, int64_t k_len) {
  const size_t need = static_cast<size_t>(std::min(q_len, kQueryTile) * std::max<int64_t>(k_len, 1));
#pragma omp parallel
  {
    auto& s = score_scratch();
    if (s.size() < need) s.resize(need);
  }
}

void attention(const AttentionShape& s, HeadsView q, HeadsView k, HeadsView v,
               const AttentionMask* mask, HeadsOut ctx, float* probs) {
  const int64_t D = s.head_dim;
  const int64_t tiles = (s.q_len + kQueryTile - 1) / kQueryTile;
  const int64_t work = s.batch * s.heads * tiles;
  // Small problems (a streamed token's attention) run on the calling thread: entering a parallel
  // region costs more than the work.
  const bool parallel = work > 1 && s.batch * s.heads * s.q_len * s.k_len * s.head_dim >= (int64_t{1} << 15);
#pragma omp parallel if (parallel)
  {
    std::vector<float>& scores = score_scratch();
#pragma omp for schedule(dynamic)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t b = w / (s.heads * tiles), h = (w / tiles) % s.heads, tile = w % tiles;
      const int64_t i0 = tile * kQueryTile, i1 = std::min(s.q_len, i0 + kQueryTile), rows = i1 - i0;
      int64_t lo, hi;
      key_range(s, i0, i1, &lo, &hi);
      const int64_t n = std::max<int64_t>(hi - lo, 0);
      if (static_cast<int64_t>(scores.size()) < rows * std::max<int64_t>(n, 1))
        scores.resize(rows * std::max<int64_t>(n, 1));
      const float* qb = q.data + b * q.batch_stride + i0 * q.time_stride + h * D;
      const float* kb = k.data + b * k.batch_stride + lo * k.time_stride + h * D;
      const float* vb = v.data + b * v.batch_stride + lo * v.time_stride + h * D;
      float* cb = ctx.data + b * ctx.batch_stride + i0 * ctx.time_stride + h * D;
      if (n > 0) gemm(qb, q.time_stride, kb, k.time_stride, true, scores.data(), n, rows, n, D, s.scale);
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = scores.data() + r * n;
        const int64_t i = i0 + r;
        float mx = -INFINITY;
        bool any = false;
        for (int64_t jj = 0; jj < n; ++jj) {
          if (allowed(s, mask, b, i, lo + jj)) {
            mx = std::max(mx, sr[jj]);
            any = true;
          } else {
            sr[jj] = -INFINITY;
          }
        }
        if (!any) {
          std::fill(sr, sr + n, 0.f);
        } else {
          float sum = 0.f;
          for (int64_t jj = 0; jj < n; ++jj) {
            const float e = sr[jj] == -INFINITY ? 0.f : std::exp(sr[jj] - mx);
            sr[jj] = e;
            sum += e;
          }
          const float inv = 1.f / sum;
          for (int64_t jj = 0; jj < n; ++jj) sr[jj] *= inv;
        }
        if (probs) {
          float* pr = probs + ((b * s.heads + h) * s.q_len + i) * s.k_len;
          std::fill(pr, pr + s.k_len, 0.f);
          std::copy(sr, sr + n, pr + lo);
        }
      }
      if (n > 0) {
        gemm(scores.data(), n, vb, v.time_stride, false, cb, ctx.time_stride, rows, D, n);
      } else {
        for (int64_t r = 0; r < rows; ++r) std::fill(cb + r * ctx.time_stride, cb + r * ctx.time_stride + D, 0.f);
      }
    }
  }
}

void attention_reference(const AttentionShape& s, HeadsView q, HeadsView k, HeadsView v,
                         const AttentionMask* mask, HeadsOut ctx, float* probs) {
  const int64_t D = s.head_dim;
  std::vector<double> p(static_cast<size_t>(s.k_len));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        const float* qi = q.data + b * q.batch_stride + i * q.time_stride + h * D;
        double mx = -INFINITY;
        for (int64_t j = 0; j < s.k_len; ++j) {
          const float* kj = k.data + b * k.batch_stride + j * k.time_stride + h * D;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(qi[d]) * kj[d];
          p[j] = allowed(s, mask, b, i, j) ? dot * s.scale : -INFINITY;
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < s.k_len; ++j) sum += p[j] = mx == -INFINITY ? 0.0 : std::exp(p[j] - mx);
        for (int64_t j = 0; j < s.k_len; ++j) p[j] = sum > 0 ? p[j] / sum : 0.0;
        float* ci = ctx.data + b * ctx.batch_stride + i * ctx.time_stride + h * D;
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < s.k_len; ++j)
            acc += p[j] * v.data[b * v.batch_stride + j * v.time_stride + h * D + d];
          ci[d] = static_cast<float>(acc);
        }
        if (probs)
          for (int64_t j = 0; j < s.k_len; ++j)
            probs[((b * s.heads + h) * s.q_len + i) * s.k_len + j] = static_cast<float>(p[j]);
      }
}

}  // namespace tokenmix
