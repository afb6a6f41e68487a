// tests/test_util.h: shared helpers for the GoogleTest suite.
#pragma once

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tokenmix/core/tensor.h"
#include "tokenmix/io/state_dict.h"

namespace tokenmix::test {

// Every *.safetensors case of a family folder under tests/data/reference, sorted.
inline std::vector<std::string> reference_cases(const std::string& family) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(std::string(TOKENMIX_REFERENCE_DIR) + "/" + family))
    if (e.path().extension() == ".safetensors") out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Tensor of N(0, stddev²) values from a seeded generator.
inline Tensor random_tensor(const Shape& shape, uint32_t seed, float stddev = 1.f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  Tensor t(shape);
  for (auto& v : t) v = dist(gen);
  return t;
}

// Random state_dict entries: weights N(0, 1/fan_in) for 2-D, N(0, 0.3²) otherwise.
inline void add_random(StateDict& sd, const std::string& key, const Shape& shape, uint32_t seed) {
  const float sd_ = shape.ndim() == 2 ? 1.f / std::sqrt(static_cast<float>(shape[1])) : 0.3f;
  sd.set(key, random_tensor(shape, seed, sd_));
}

// Name of a reference case file without folder or extension (for test names).
inline std::string case_name(const std::string& path) { return std::filesystem::path(path).stem().string(); }

}  // namespace tokenmix::test
