#include "tokenmix/kernels/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tokenmix/core/cpu.h"
#include "tokenmix/core/threads.h"
#include "tokenmix/core/workspace.h"
#include "tokenmix/kernels/linear.h"
#include "attention_tiles.h"
#include "softmax_row.h"

namespace tokenmix {

namespace {

using softmax::exp_sub_sum;
using softmax::row_max;
using softmax::scale_row;

// Query rows per work item of the probs path (full score rows, exact two-pass softmax).
constexpr int64_t kQueryTile = 64;
// Flash path: keys per block, query rows per tile, and (register tiles) query rows per work item.
// OpenBLAS variant: the block's scores and probabilities are kFlashQ x kFlashK floats each (2 x 256
// KiB, an L2 of 512 KiB); larger tiles mean fewer re-packs of each K / V block by OpenBLAS (the
// sizes are the best of a sweep, BENCHMARKS.md). Register-tile variant: a work item packs its keys
// and values once for up to kSpanQ query rows (flash_rows: once per head at T = 4096 when there are
// heads enough to give every thread two work items).
constexpr int64_t kFlashK = 256;
constexpr int64_t kFlashQ = 256;
constexpr int64_t kSpanQ = 4096;
// Below this many query rows the per-row decode path is used (one or a few tokens over a cache).
constexpr int64_t kDecodeRows = 4;

// Row (b, t) of head h of a view (head_dim D).
inline const float* at(const HeadsView& x, int64_t b, int64_t t, int64_t h, int64_t D) {
  return x.data + b * x.batch_stride + t * x.time_stride + h * (x.head_stride ? x.head_stride : D);
}
inline float* at(const HeadsOut& x, int64_t b, int64_t t, int64_t h, int64_t D) {
  return x.data + b * x.batch_stride + t * x.time_stride + h * D;
}

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

// True when every (i, j) of rows [i0, i1) x keys [j0, j1) passes the causal band (the mask aside).
inline bool band_covers(const AttentionShape& s, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  if (!s.causal) return true;
  if (j1 - 1 > i0 + s.query_offset) return false;
  return s.left_context == 0 || (i1 - 1 + s.query_offset) - j0 < s.left_context;
}

// Sets scores of row i (keys j0 .. j0+n) that the mask or band forbids to -inf.
inline void mask_row(const AttentionShape& s, const AttentionMask* mask, int64_t b, int64_t i, int64_t j0,
                     float* sr, int64_t n) {
  for (int64_t jj = 0; jj < n; ++jj)
    if (!allowed(s, mask, b, i, j0 + jj)) sr[jj] = -INFINITY;
}



// Queries [i0, i1) of head h in batch b with full score rows and the exact two-pass softmax,
// writing probs. scores: rows x (hi - lo) scratch.
void tile_with_probs(const AttentionShape& s, const HeadsView& q, const HeadsView& k, const HeadsView& v,
                     const AttentionMask* mask, const HeadsOut& ctx, float* probs, int64_t b, int64_t h,
                     int64_t i0, int64_t i1, std::vector<float>& scores) {
  const int64_t D = s.head_dim, rows = i1 - i0;
  int64_t lo, hi;
  key_range(s, i0, i1, &lo, &hi);
  const int64_t n = std::max<int64_t>(hi - lo, 0);
  if (static_cast<int64_t>(scores.size()) < rows * std::max<int64_t>(n, 1))
    scores.resize(rows * std::max<int64_t>(n, 1));
  const float* qb = at(q, b, i0, h, D);
  const float* kb = at(k, b, lo, h, D);
  const float* vb = at(v, b, lo, h, D);
  float* cb = at(ctx, b, i0, h, D);
  if (n > 0) gemm(qb, q.time_stride, kb, k.time_stride, true, scores.data(), n, rows, n, D, s.scale);
  const bool whole = !mask && band_covers(s, i0, i1, lo, hi);
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = scores.data() + r * n;
    const int64_t i = i0 + r;
    if (!whole) mask_row(s, mask, b, i, lo, sr, n);
    const float mx = row_max(sr, n);
    if (mx == -INFINITY) {
      std::fill(sr, sr + n, 0.f);
    } else {
      scale_row(sr, n, 1.f / exp_sub_sum(sr, n, mx, sr));
    }
    float* pr = probs + ((b * s.heads + h) * s.q_len + i) * s.k_len;
    std::fill(pr, pr + s.k_len, 0.f);
    std::copy(sr, sr + n, pr + lo);
  }
  if (n > 0) {
    gemm(scores.data(), n, vb, v.time_stride, false, cb, ctx.time_stride, rows, D, n);
  } else {
    for (int64_t r = 0; r < rows; ++r) std::fill(cb + r * ctx.time_stride, cb + r * ctx.time_stride + D, 0.f);
  }
}


// Decoding: one query row i of head h in batch b over its whole key range (a KV cache): scores in
// registers-wide key groups, the exact two-pass softmax, the context accumulated in registers.
// Reads each key and value of the head once, with no BLAS call overhead (a GEMV per head costs more
// in call overhead than in arithmetic at these sizes). scores: (hi - lo) scratch.
void row_decode(const AttentionShape& s, const HeadsView& q, const HeadsView& k, const HeadsView& v,
                const AttentionMask* mask, const HeadsOut& ctx, int64_t b, int64_t h, int64_t i,
                std::vector<float>& scores) {
  const int64_t D = s.head_dim;
  int64_t lo, hi;
  key_range(s, i, i + 1, &lo, &hi);
  const int64_t n = std::max<int64_t>(hi - lo, 0);
  float* ci = at(ctx, b, i, h, D);
  if (static_cast<int64_t>(scores.size()) < n) scores.resize(n);
  float* sr = scores.data();
  attention_scores(at(q, b, i, h, D), at(k, b, lo, h, D), n, k.time_stride, D, s.scale, sr);
  if (mask || !band_covers(s, i, i + 1, lo, hi)) mask_row(s, mask, b, i, lo, sr, n);
  float mx;
  const float d = attention_context_unnormalized(sr, n, at(v, b, lo, h, D), v.time_stride, D, ci, &mx);
  scale_row(ci, D, d > 0.f ? 1.f / d : 0.f);
}

// One score row of a key block through the online softmax: masks it (unless whole), raises the
// running max *m (rescaling the sum *l and the unnormalised context row c of D floats when it
// grows), writes p = exp(s - m) (Base2: 2^(s - m) by exp2_sub_sum_coarse, for log2(e)-scaled scores)
// and adds its sum to *l. p may be s; otherwise s is cleared (the BLAS
// path accumulates the next block's scores into it). Returns false, with p = 0, while the row has
// kept no key at all.
template <bool Base2 = false>
bool online_softmax_row(const AttentionShape& s, const AttentionMask* mask, bool whole, int64_t b, int64_t i,
                        int64_t j0, float* sr, float* pr, int64_t n, float* m, float* l, float* c) {
  if (!whole) mask_row(s, mask, b, i, j0, sr, n);
  const float mnew = std::max(*m, row_max(sr, n));
  if (mnew == -INFINITY) {
    std::fill(sr, sr + n, 0.f);
    std::fill(pr, pr + n, 0.f);
    return false;
  }
  if (mnew > *m) {
    if (*m != -INFINITY) {  // rescale what was accumulated under the old max
      const float alpha = Base2 ? std::exp2(*m - mnew) : std::exp(*m - mnew);
      *l *= alpha;
      scale_row(c, s.head_dim, alpha);
    }
    *m = mnew;
  }
  *l += Base2 ? softmax::exp2_sub_sum_coarse(sr, n, mnew, pr) : exp_sub_sum(sr, n, mnew, pr);
  return true;
}

// The first 64-byte boundary at or after p (at most 15 floats on): vector loads from there never
// straddle two cache lines.
inline float* align_cache_line(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}

// Whether the flash path runs on the register tiles of attention_tiles.h (else on OpenBLAS).
bool register_tiles(int64_t D) { return tiles::available() && D % 8 == 0; }

// Whether they take bf16 operands: asked for by the shape, run by the CPU, whole 16-feature slices.
bool bf16_tiles(const AttentionShape& s) { return s.bf16_products && tiles::bf16::available() && s.head_dim % 16 == 0; }

// Query rows per work item of the flash path. Register tiles: the longest span (a multiple of
// kFlashQ, at most kSpanQ) that still makes two work items per thread, since each work item packs
// its keys and values once.
int64_t flash_rows(const AttentionShape& s, int threads) {
  if (!register_tiles(s.head_dim)) return kFlashQ;
  const int64_t pairs = s.batch * s.heads;                                      // work items per span
  const int64_t spans = std::max<int64_t>(1, (2 * threads + pairs - 1) / pairs);  // spans per (b, h)
  const int64_t rows = (s.q_len + spans - 1) / spans;
  return std::clamp((rows + kFlashQ - 1) / kFlashQ * kFlashQ, kFlashQ, kSpanQ);
}

// Thread scratch of the flash path for up to k_len keys, then the running max and sum of kFlashQ
// rows. Register tiles: the work item's packed keys and values, a tile's queries and context and
// one row group's scores (2.2 MB at k_len = 4096, D = 64). OpenBLAS: the score and probability
// blocks (512 KiB).
int64_t flash_scratch_size(int64_t D, int64_t k_len) {
  const int64_t blocks = register_tiles(D) ? tiles::key_panels_size(k_len, D) + tiles::value_slices_size(k_len, D) +
                                                 2 * kFlashQ * D + tiles::kTileRows * kFlashK + 16
                                           : 2 * kFlashQ * kFlashK;
  return blocks + 2 * kFlashQ;
}

// Rows [0, rows) of a flash tile before its first key block: no max, no sum, a zero context.
void start_rows(float* m, float* l, float* c, int64_t ldc, int64_t rows, int64_t D) {
  for (int64_t r = 0; r < rows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
    std::fill(c + r * ldc, c + r * ldc + D, 0.f);
  }
}

// ... and after its last one: out = the context divided by the softmax sum (0 for rows that kept
// nothing). out may be c (ldo = ldc).
void finish_rows(const float* l, const float* c, int64_t ldc, int64_t rows, int64_t D, float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    for (int64_t d = 0; d < D; ++d) out[r * ldo + d] = c[r * ldc + d] * inv;
  }
}

// Flash attention for queries [i0, i1) of head h in batch b: key blocks of kFlashK under an online
// softmax (running row max m and sum l, the context accumulated unnormalised in ctx and rescaled
// when m grows), one kFlashQ-row tile at a time. Extra memory per thread: flash_scratch_size().
//
// Register tiles (kernel set avx2, head_dim % 8 == 0): the work item packs the keys and values it can see once
// (key panels for the scores, 16-feature value slices for P·V), then each group of kTileRows query
// rows goes through scores, softmax and P·V while its scores sit in L1 (attention_tiles.h). A
// tile's queries and context are copied to contiguous (kFlashQ, D) blocks too: rows of a (T, E)
// buffer lie 2-6 KiB apart, so a tile's Q and ctx rows fell into a few L1/L2 sets and evicted each
// other. The tile and a block's packed keys and values (4 x 64 KiB at D = 64) stay in L2.
//
// Products: the operands' precision, Fp32Products or Bf16Products below (packed element type, the
// packers and the two products); the softmax and the context are fp32 in both.
template <class Products>
void flash_register_tiles(const AttentionShape& s, const HeadsView& q, const HeadsView& k, const HeadsView& v,
                          const AttentionMask* mask, const HeadsOut& ctx, int64_t b, int64_t h, int64_t i0,
                          int64_t i1, std::vector<float>& scratch) {
  using Packed = typename Products::Packed;
  const int64_t D = s.head_dim;
  int64_t lo, hi;
  key_range(s, i0, i1, &lo, &hi);
  const int64_t need = flash_scratch_size(D, hi - lo);
  if (static_cast<int64_t>(scratch.size()) < need) scratch.resize(need);
  // Every region is a whole number of cache lines (D % 8 == 0), so all stay aligned; a bf16 layout
  // takes at most as much as the fp32 one flash_scratch_size() counts.
  Packed* Kp = reinterpret_cast<Packed*>(align_cache_line(scratch.data()));  // key panels of keys [lo, hi)
  Packed* Vs = Kp + tiles::key_panels_size(hi - lo, D);                      // value slices of values [lo, hi)
  Packed* Qt = Vs + Products::value_slices_size(hi - lo, D);                 // queries of a tile, (kFlashQ, D)
  float* Ct = reinterpret_cast<float*>(Qt + kFlashQ * D);  // unnormalised context of a tile, (kFlashQ, D)
  float* S = Ct + kFlashQ * D;                             // scores / probabilities of a row group
  float* m = S + tiles::kTileRows * kFlashK;               // running max per row of a tile
  float* l = m + kFlashQ;                                  // running sum per row of a tile
  const int64_t slice_stride = Products::value_slices_size(hi - lo, tiles::kSliceFeatures);
  // Base 2: the scores carry log2(e), so 2^(score - max) is the softmax's exp(s·scale - max).
  const float scale = Products::kBase2 ? s.scale * 1.4426950408889634f : s.scale;
  if (hi > lo) {
    Products::pack_key_panels(at(k, b, lo, h, D), k.time_stride, hi - lo, D, Kp);
    Products::pack_value_slices(at(v, b, lo, h, D), v.time_stride, hi - lo, D, Vs);
  }
  for (int64_t t0 = i0; t0 < i1; t0 += kFlashQ) {
    const int64_t t1 = std::min(i1, t0 + kFlashQ), rows = t1 - t0;
    Products::pack_rows(at(q, b, t0, h, D), q.time_stride, rows, D, Qt);
    start_rows(m, l, Ct, D, rows, D);
    int64_t tlo, thi;
    key_range(s, t0, t1, &tlo, &thi);
    // Blocks start on a panel boundary of the packed keys; keys before tlo are outside the band
    // and masked like any other.
    for (int64_t j0 = lo + (std::max(tlo, lo) - lo) / tiles::kPanelKeys * tiles::kPanelKeys; j0 < thi;
         j0 += kFlashK) {
      const int64_t j1 = std::min(thi, j0 + kFlashK), lds = tiles::key_panels_size(j1 - j0, 1);
      for (int64_t r0 = 0; r0 < rows; r0 += tiles::kTileRows) {
        const int mr = static_cast<int>(std::min<int64_t>(tiles::kTileRows, rows - r0));
        // The keys of the block that the group's rows can see, from a panel boundary: under a causal
        // band a group on the block's diagonal scores only the panels up to its last row (half the
        // work of a diagonal block, which is all of a causal T <= 256 call).
        int64_t glo, ghi;
        key_range(s, t0 + r0, t0 + r0 + mr, &glo, &ghi);
        const int64_t g0 = j0 + (std::max(glo, j0) - j0) / tiles::kPanelKeys * tiles::kPanelKeys;
        const int64_t g1 = std::min(j1, ghi), n = g1 - g0;
        if (n <= 0) continue;  // no row of the group sees the block
        const bool whole = !mask && band_covers(s, t0 + r0, t0 + r0 + mr, g0, g1);
        Products::scores_rows(mr, Qt + r0 * D, D, Kp + (g0 - lo) * D, n, D, scale, S, lds);
        bool any = false;
        for (int r = 0; r < mr; ++r)
          any |= online_softmax_row<Products::kBase2>(s, mask, whole, b, t0 + r0 + r, g0, S + r * lds, S + r * lds, n, m + r0 + r,
                                    l + r0 + r, Ct + (r0 + r) * D);
        if (any)
          Products::context_rows(mr, S, lds, Vs + (g0 - lo) * tiles::kSliceFeatures, slice_stride, n, D,
                                 Ct + r0 * D, D);
      }
    }
    finish_rows(l, Ct, D, rows, D, at(ctx, b, t0, h, D), ctx.time_stride);
  }
}

// kBase2: the softmax of the tiles runs in base 2 on log2(e)-scaled scores, with the coarse exp2
// (softmax_row.h) where the probabilities are rounded to bf16 next.
struct Fp32Products {
  using Packed = float;
  static constexpr bool kBase2 = false;
  static int64_t value_slices_size(int64_t n, int64_t D) { return tiles::value_slices_size(n, D); }
  static constexpr auto pack_key_panels = tiles::pack_key_panels;
  static constexpr auto pack_value_slices = tiles::pack_value_slices;
  static constexpr auto pack_rows = tiles::pack_rows;
  static constexpr auto scores_rows = tiles::scores_rows;
  static constexpr auto context_rows = tiles::context_rows;
};
struct Bf16Products {
  using Packed = uint16_t;
  static constexpr bool kBase2 = true;
  static int64_t value_slices_size(int64_t n, int64_t D) { return tiles::bf16::value_slices_size(n, D); }
  static constexpr auto pack_key_panels = tiles::bf16::pack_key_panels;
  static constexpr auto pack_value_slices = tiles::bf16::pack_value_slices;
  static constexpr auto pack_rows = tiles::bf16::pack_rows;
  static constexpr auto scores_rows = tiles::bf16::scores_rows;
  static constexpr auto context_rows = tiles::bf16::context_rows;
};

// OpenBLAS variant (other CPUs and head dims), one kFlashQ-row tile: two GEMMs per key block over
// the whole tile, with the kFlashQ x kFlashK score and probability blocks in between. The softmax
// pass clears the score block as it reads it, so the next block's Q·Kᵀ accumulates into it
// (beta = 1) and OpenBLAS skips its zeroing pass.
void flash_blas(const AttentionShape& s, const HeadsView& q, const HeadsView& k, const HeadsView& v,
                const AttentionMask* mask, const HeadsOut& ctx, int64_t b, int64_t h, int64_t i0, int64_t i1,
                std::vector<float>& scratch) {
  const int64_t D = s.head_dim, rows = i1 - i0, ldq = q.time_stride, ldc = ctx.time_stride;
  int64_t lo, hi;
  key_range(s, i0, i1, &lo, &hi);
  const int64_t need = flash_scratch_size(D, hi - lo);
  if (static_cast<int64_t>(scratch.size()) < need) scratch.resize(need);
  float* S = scratch.data();         // scores of the block (rows, n); zero between blocks
  float* P = S + kFlashQ * kFlashK;  // probabilities of the block (rows, n)
  float* m = P + kFlashQ * kFlashK;  // running max per row
  float* l = m + kFlashQ;            // running sum per row
  const float* qb = at(q, b, i0, h, D);
  float* cb = at(ctx, b, i0, h, D);
  start_rows(m, l, cb, ldc, rows, D);
  for (int64_t j0 = lo; j0 < hi; j0 += kFlashK) {
    const int64_t j1 = std::min(hi, j0 + kFlashK), n = j1 - j0;
    const bool whole = !mask && band_covers(s, i0, i1, j0, j1);
    // S holds zeros after the first block (cleared by the softmax pass; a later block is never wider).
    gemm(qb, ldq, at(k, b, j0, h, D), k.time_stride, true, S, n, rows, n, D, s.scale, j0 == lo ? 0.f : 1.f);
    bool any = false;
    for (int64_t r = 0; r < rows; ++r)
      any |= online_softmax_row(s, mask, whole, b, i0 + r, j0, S + r * n, P + r * n, n, m + r, l + r, cb + r * ldc);
    if (any) gemm(P, n, at(v, b, j0, h, D), v.time_stride, false, cb, ldc, rows, D, n, 1.f, 1.f);
  }
  finish_rows(l, cb, ldc, rows, D, cb, ldc);
}

// Scratch of every path (buffer 0 of a workspace), one workspace per worker of a call, grown only
// (attention_reserve() pre-grows them for streams).
WorkspacePool& score_pool() {
  static WorkspacePool pool;
  return pool;
}

}  // namespace

AttentionShape AttentionShape::scaled(int64_t batch, int64_t heads, int64_t head_dim, int64_t q_len, int64_t k_len) {
  AttentionShape s;
  s.batch = batch;
  s.heads = heads;
  s.head_dim = head_dim;
  s.q_len = q_len;
  s.k_len = k_len;
  s.scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  return s;
}

AttentionShape AttentionShape::with_causal_band(int64_t offset, int64_t left) const {
  AttentionShape s = *this;
  s.causal = true;
  s.query_offset = offset;
  s.left_context = left;
  return s;
}

void attention_reserve(int64_t q_len, int64_t k_len, int64_t head_dim) {
  // Large enough for any path: probability tiles, the decode path and the flash tiles.
  const size_t need = static_cast<size_t>(std::max(std::min(q_len, kQueryTile) * std::max<int64_t>(k_len, 1),
                                                   flash_scratch_size(head_dim, k_len)));
  score_pool().reserve(omp_get_max_threads(), 0, static_cast<int64_t>(need));
}

void attention(const AttentionShape& s, HeadsView q, HeadsView k, HeadsView v,
               const AttentionMask* mask, HeadsOut ctx, float* probs) {
  if (s.batch <= 0 || s.heads <= 0 || s.q_len <= 0) return;
  kernel_isa();  // chosen (or its error thrown) here, before the parallel region that uses it
  // Fork only when there is enough to share: a decode step over a short cache (e.g. 8 heads x 257
  // keys x 64) is a few microseconds, less than waking a second thread on a busy machine.
  const double macs = static_cast<double>(s.batch) * s.heads * s.q_len * std::max<int64_t>(s.k_len, 1) * s.head_dim;
  const bool parallel = macs >= threshold::kAttentionMacs;
  // Work items: (b, h, query tile), or (b, h, query row) on the decode path.
  const bool rowwise = !probs && s.q_len < kDecodeRows;
  const int64_t tile = probs ? kQueryTile : rowwise ? 1 : flash_rows(s, parallel ? omp_get_max_threads() : 1);
  const int64_t tiles = (s.q_len + tile - 1) / tile;
  const int64_t work = s.batch * s.heads * tiles;
  const auto flash = !register_tiles(s.head_dim) ? flash_blas
                     : bf16_tiles(s)             ? flash_register_tiles<Bf16Products>
                                                 : flash_register_tiles<Fp32Products>;
#pragma omp parallel if (work > 1 && parallel)
  {
    const WorkspacePool::Lease lease = score_pool().acquire();
    std::vector<float>& scores = lease->buffer(0);
#pragma omp for schedule(dynamic)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t b = w / (s.heads * tiles), h = (w / tiles) % s.heads, t = w % tiles;
      const int64_t i0 = t * tile, i1 = std::min(s.q_len, i0 + tile);
      if (probs)
        tile_with_probs(s, q, k, v, mask, ctx, probs, b, h, i0, i1, scores);
      else if (rowwise)
        row_decode(s, q, k, v, mask, ctx, b, h, i0, scores);
      else
        flash(s, q, k, v, mask, ctx, b, h, i0, i1, scores);
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
        const float* qi = at(q, b, i, h, D);
        double mx = -INFINITY;
        for (int64_t j = 0; j < s.k_len; ++j) {
          const float* kj = at(k, b, j, h, D);
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(qi[d]) * kj[d];
          p[j] = allowed(s, mask, b, i, j) ? dot * s.scale : -INFINITY;
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < s.k_len; ++j) sum += p[j] = mx == -INFINITY ? 0.0 : std::exp(p[j] - mx);
        for (int64_t j = 0; j < s.k_len; ++j) p[j] = sum > 0 ? p[j] / sum : 0.0;
        float* ci = at(ctx, b, i, h, D);
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < s.k_len; ++j)
            acc += p[j] * at(v, b, j, h, D)[d];
          ci[d] = static_cast<float>(acc);
        }
        if (probs)
          for (int64_t j = 0; j < s.k_len; ++j)
            probs[((b * s.heads + h) * s.q_len + i) * s.k_len + j] = static_cast<float>(p[j]);
      }
}

}  // namespace tokenmix
