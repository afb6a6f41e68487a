#include "tokenmix/kernels/layer_norm.h"

#include <cmath>

#include "tokenmix/core/threads.h"

namespace tokenmix {

void layer_norm(const float* x_all, int64_t rows, int64_t n, const float* weight, const float* bias, float eps,
                float* y_all) {
#pragma omp parallel for schedule(static) if (rows >= threshold::kRows)
  for (int64_t t = 0; t < rows; ++t) {
    const float* x = x_all + t * n;
    float* y = y_all + t * n;
    double mean = 0;
#pragma omp simd reduction(+ : mean)
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= static_cast<double>(n);
    double var = 0;
#pragma omp simd reduction(+ : var)
    for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    var /= static_cast<double>(n);
    const float m = static_cast<float>(mean);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * rstd * weight[i] + bias[i];
  }
}

}  // namespace tokenmix
