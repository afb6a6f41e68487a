// tokenmix/kernels/permute.h: axis permutation of a contiguous tensor (layout conversions such as
// (T, B, E) <-> (B, T, E) or (B, E, T) <-> (B, T, E) at an API boundary).
#pragma once

#include <vector>

#include "tokenmix/core/tensor.h"

namespace tokenmix {

// Returns a new contiguous tensor y with y.dim(i) = x.dim(perm[i]) and
// y[i_0, ..., i_{n-1}] = x[j] where j[perm[a]] = i_a (numpy's x.transpose(perm)).
// Throws Error "permute: perm: ..." unless perm is a permutation of 0 .. x.ndim()-1.
Tensor permute(const Tensor& x, const std::vector<int>& perm);

}  // namespace tokenmix
