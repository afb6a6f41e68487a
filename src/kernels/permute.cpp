#include "tokenmix/kernels/permute.h"

#include <algorithm>
#include <array>

namespace tokenmix {

Tensor permute(const Tensor& x, const std::vector<int>& perm) {
  const int n = x.ndim();
  std::vector<int> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  bool ok = static_cast<int>(perm.size()) == n;
  for (int i = 0; ok && i < n; ++i) ok = sorted[i] == i;
  check(ok, "permute: perm: expected a permutation of the ", n, " axes of ", x.shape());
  // Strides of x, padded to 4 axes (size-1 axes in front).
  std::array<int64_t, 4> in_stride{}, out_dim{1, 1, 1, 1}, stride{0, 0, 0, 0};
  int64_t s = 1;
  for (int i = n - 1; i >= 0; --i) {
    in_stride[i] = s;
    s *= x.dim(i);
  }
  std::vector<int64_t> dims(n);
  for (int a = 0; a < n; ++a) {
    dims[a] = x.dim(perm[a]);
    out_dim[4 - n + a] = dims[a];
    stride[4 - n + a] = in_stride[perm[a]];
  }
  Tensor y = Tensor::uninitialized(Shape(dims));  // every element written below
  const float* src = x.data();
  float* dst = y.data();
  for (int64_t i0 = 0; i0 < out_dim[0]; ++i0)
    for (int64_t i1 = 0; i1 < out_dim[1]; ++i1)
      for (int64_t i2 = 0; i2 < out_dim[2]; ++i2) {
        const float* p = src + i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
        for (int64_t i3 = 0; i3 < out_dim[3]; ++i3) *dst++ = p[i3 * stride[3]];
      }
  return y;
}

}  // namespace tokenmix
