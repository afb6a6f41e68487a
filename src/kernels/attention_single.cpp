// The single-query attention kernels (kernels/attention.h: attention_scores,
// attention_context_unnormalized) behind the decode path, KV-cache streams and the retroactive
// stream, each with its plain reference loop.
#include <algorithm>
#include <cmath>

#include "tokenmix/core/cpu.h"
#include "tokenmix/kernels/attention.h"
#include "simd_math.h"
#include "softmax_row.h"

namespace tokenmix {

namespace {

// Single-query inner loops for one head over n keys at row stride ld (a KV cache: time_stride E),
// behind attention_scores() and attention_context_unnormalized():
//   scores_k_*(q, K, n, ld, D, scale, out):  out[j] = scale * (q · K_j)
//   context_v_*(p, V, n, ld, D, c):          c = Σ_j p[j] V_j            (c overwritten)
// The vector versions need D % 8 == 0; the plain loops serve every D and are the reference for
// them (tests/attention_kernel_test.cpp covers both through attention_reference()).
void scores_k_plain(const float* q, const float* K, int64_t n, int64_t ld, int64_t D, float scale, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    float acc = 0.f;
    for (int64_t d = 0; d < D; ++d) acc += q[d] * K[j * ld + d];
    out[j] = scale * acc;
  }
}

void context_v_plain(const float* p, const float* V, int64_t n, int64_t ld, int64_t D, float* c) {
  std::fill(c, c + D, 0.f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) c[d] += p[j] * V[j * ld + d];
}

TOKENMIX_AVX2_BEGIN
using simd::hsum;

// Eight keys at a time: eight independent FMA chains over D, then one transposing reduction of the
// eight partial-sum vectors into the eight scores.
void scores_k_avx2(const float* q, const float* K, int64_t n, int64_t ld, int64_t D, float scale, float* out) {
  const __m256 vs = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const float* k0 = K + j * ld;
    __m256 a[8];
    for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 qd = _mm256_loadu_ps(q + d);
      for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k0 + r * ld + d), a[r]);
    }
    const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
    _mm256_storeu_ps(out + j, _mm256_mul_ps(sum, vs));
  }
  for (; j < n; ++j) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(K + j * ld + d), a);
    out[j] = scale * hsum(a);
  }
}

// The context of up to 64 features (NV vectors) held in registers over all n keys.
template <int NV>
void context_v_slice_avx2(const float* p, const float* V, int64_t n, int64_t ld, float* c) {
  __m256 acc[NV];
  for (int r = 0; r < NV; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const float* vj = V + j * ld;
    for (int r = 0; r < NV; ++r) acc[r] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * r), acc[r]);
  }
  for (int r = 0; r < NV; ++r) _mm256_storeu_ps(c + 8 * r, acc[r]);
}

void context_v_avx2(const float* p, const float* V, int64_t n, int64_t ld, int64_t D, float* c) {
  using Slice = void (*)(const float*, const float*, int64_t, int64_t, float*);
  static constexpr Slice slices[8] = {context_v_slice_avx2<1>, context_v_slice_avx2<2>, context_v_slice_avx2<3>,
                                      context_v_slice_avx2<4>, context_v_slice_avx2<5>, context_v_slice_avx2<6>,
                                      context_v_slice_avx2<7>, context_v_slice_avx2<8>};
  for (int64_t d0 = 0; d0 < D; d0 += 64) slices[std::min<int64_t>(D - d0, 64) / 8 - 1](p, V + d0, n, ld, c + d0);
}
TOKENMIX_AVX2_END

bool vector_path(int64_t D) { return D % 8 == 0 && kernel_isa() >= KernelIsa::kAvx2; }

}  // namespace

void attention_scores(const float* q, const float* K, int64_t n, int64_t ld, int64_t D, float scale, float* out) {
  if (vector_path(D)) return scores_k_avx2(q, K, n, ld, D, scale, out);
  scores_k_plain(q, K, n, ld, D, scale, out);
}

float attention_context_unnormalized(float* s, int64_t n, const float* V, int64_t ld, int64_t D, float* c,
                                     float* max) {
  *max = softmax::row_max(s, n);
  if (*max == -INFINITY) {
    std::fill(c, c + D, 0.f);
    return 0.f;
  }
  const float d = softmax::exp_sub_sum(s, n, *max, s);
  if (vector_path(D)) {
    context_v_avx2(s, V, n, ld, D, c);
    return d;
  }
  context_v_plain(s, V, n, ld, D, c);
  return d;
}

}  // namespace tokenmix
