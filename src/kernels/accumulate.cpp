#include "tokenmix/kernels/accumulate.h"

#include "tokenmix/core/cpu.h"
#include "isa_target.h"

namespace tokenmix {

namespace {

TOKENMIX_AVX2_BEGIN
// The 8-lane body; returns how many leading elements it did (n rounded down to 8). Multiplies and
// adds kept apart (no FMA): the same roundings as the reference loop.
int64_t rescale_accumulate_avx2(float* a, int64_t n, float f, const float* u_new, float w_new, const float* u_old,
                                float w_old, float* y, float y_scale) {
  const __m256 vf = _mm256_set1_ps(f), vn = _mm256_set1_ps(w_new), vo = _mm256_set1_ps(w_old),
               vs = _mm256_set1_ps(y_scale);
  int64_t e = 0;
  for (; e + 8 <= n; e += 8) {
    const __m256 change = _mm256_sub_ps(_mm256_mul_ps(vn, _mm256_loadu_ps(u_new + e)),
                                        _mm256_mul_ps(vo, _mm256_loadu_ps(u_old + e)));
    const __m256 v = _mm256_add_ps(_mm256_mul_ps(vf, _mm256_loadu_ps(a + e)), change);
    _mm256_storeu_ps(a + e, v);
    if (y) _mm256_storeu_ps(y + e, _mm256_add_ps(_mm256_loadu_ps(y + e), _mm256_mul_ps(v, vs)));
  }
  return e;
}
TOKENMIX_AVX2_END

}  // namespace

void rescale_accumulate_reference(float* a, int64_t n, float f, const float* u_new, float w_new,
                                  const float* u_old, float w_old, float* y, float y_scale) {
  for (int64_t e = 0; e < n; ++e) {
    a[e] = f * a[e] + (w_new * u_new[e] - w_old * u_old[e]);
    if (y) y[e] += a[e] * y_scale;
  }
}

void rescale_accumulate(float* a, int64_t n, float f, const float* u_new, float w_new, const float* u_old,
                        float w_old, float* y, float y_scale) {
  const int64_t e =
      kernel_isa() >= KernelIsa::kAvx2 ? rescale_accumulate_avx2(a, n, f, u_new, w_new, u_old, w_old, y, y_scale) : 0;
  rescale_accumulate_reference(a + e, n - e, f, u_new + e, w_new, u_old + e, w_old, y ? y + e : nullptr, y_scale);
}

}  // namespace tokenmix
