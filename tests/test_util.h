// tests/test_util.h: shared helpers for the GoogleTest suite.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "tokenmix/core/error.h"
#include "tokenmix/core/tensor.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/precision.h"
#include "tokenmix/streaming/stream.h"

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

// Whether this CPU runs precision p (resolve_precision does not refuse it).
inline bool cpu_runs(Precision p) {
  try {
    resolve_precision(p);
    return true;
  } catch (const Error&) {
    return false;
  }
}

// Random state_dict entries: weights N(0, 1/fan_in) for 2-D, N(0, 0.3²) otherwise.
inline void add_random(StateDict& sd, const std::string& key, const Shape& shape, uint32_t seed) {
  const float sd_ = shape.ndim() == 2 ? 1.f / std::sqrt(static_cast<float>(shape[1])) : 0.3f;
  sd.set(key, random_tensor(shape, seed, sd_));
}

// A path in the temp directory, unique to this process: CTest runs the tests as parallel
// processes, so a fixed name would let two tests overwrite each other's file.
inline std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("tokenmix_" + std::to_string(::getpid()) + "_" + name)).string();
}

// Name of a reference case file without folder or extension (for test names).
inline std::string case_name(const std::string& path) { return std::filesystem::path(path).stem().string(); }

// Mask of Bernoulli(keep) 0/1 values drawn from gen, or from a generator seeded with seed.
inline Mask random_mask(const Shape& shape, std::mt19937& gen, double keep = 0.7) {
  std::bernoulli_distribution d(keep);
  Mask m(shape);
  for (auto& v : m) v = d(gen);
  return m;
}
inline Mask random_mask(const Shape& shape, uint32_t seed, double keep = 0.7) {
  std::mt19937 gen(seed);
  return random_mask(shape, gen, keep);
}

// Runs f and expects it to throw tokenmix::Error whose message contains fragment.
template <typename F>
void expect_error(F&& f, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "expected tokenmix::Error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << "message: " << e.what();
  }
}

// Same shape and every element within atol + rtol·|want| (NaN never passes).
inline ::testing::AssertionResult all_close(const Tensor& got, const Tensor& want, double atol, double rtol = 0) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << "shape " << got.shape().str() << " vs " << want.shape().str();
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double x = got.data()[i], y = want.data()[i];
    if (!(std::abs(x - y) <= atol + rtol * std::abs(y)))
      return ::testing::AssertionFailure() << "element " << i << ": " << x << " vs " << y;
  }
  return ::testing::AssertionSuccess();
}

// Largest |a - b| over all elements (NaN when any difference is NaN); throws Error when the shapes
// differ.
inline float max_abs_diff(const Tensor& a, const Tensor& b) {
  check(a.shape() == b.shape(), "max_abs_diff: shapes differ: ", a.shape(), " vs ", b.shape());
  float m = 0.f;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const float d = std::fabs(a.data()[i] - b.data()[i]);
    if (std::isnan(d)) return NAN;
    m = std::max(m, d);
  }
  return m;
}

// Same shape and the same bits in every element.
inline bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * a.numel()) == 0;
}

// x[:, start : start + len] of a (B, T, E) tensor, as a new (B, len, E) tensor.
inline Tensor slice_time(const Tensor& x, int64_t start, int64_t len) {
  const int64_t B = x.dim(0), T = x.dim(1), E = x.dim(2);
  Tensor out{Shape{B, len, E}};
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(out.data() + b * len * E, x.data() + (b * T + start) * E, sizeof(float) * len * E);
  return out;
}

// Pushes x (B, T, E) through stream s in chunks of the given sizes (cycled, the last one cut to fit)
// and concatenates the outputs (B, C_out, ...) along axis 1: (B, ΣC_out, ...), e.g. (B, n, E). With
// take, what take(s) returns after each push is collected instead of the push output (e.g. the
// retroactive stream's (B, C_out, L, E) window outputs). Empty tensor when T = 0.
// With check_shapes, every push must return the shape output_shape(C) announced just before it.
inline Tensor run_stream(Stream& s, const Tensor& x, const std::vector<int64_t>& chunks,
                         const std::function<Tensor(const Stream&)>& take = nullptr,
                         bool check_shapes = false) {
  const int64_t B = x.dim(0), T = x.dim(1);
  std::vector<std::vector<float>> rows(B);
  std::vector<int64_t> dims;
  int64_t total = 0;
  for (int64_t t = 0, k = 0; t < T; ++k) {
    const int64_t C = std::min(chunks[k % chunks.size()], T - t);
    const Shape announced = s.output_shape(C);
    Tensor y = s.push(slice_time(x, t, C));
    if (check_shapes) {
      EXPECT_EQ(announced, y.shape()) << "output_shape(" << C << ") before the push";
    }
    if (take) y = take(s);
    t += C;
    EXPECT_GE(y.ndim(), 3);
    EXPECT_EQ(y.dim(0), B);
    std::vector<int64_t> yd = y.shape().dims();
    yd[1] = 0;
    EXPECT_TRUE(dims.empty() || dims == yd) << "push output shapes differ: " << y.shape().str();
    dims = yd;
    const int64_t n = y.numel() / B;
    total += y.dim(1);
    for (int64_t b = 0; b < B; ++b) rows[b].insert(rows[b].end(), y.data() + b * n, y.data() + (b + 1) * n);
  }
  if (dims.empty()) return {};
  dims[1] = total;
  Tensor out{Shape(dims)};
  for (int64_t b = 0; b < B; ++b) std::copy(rows[b].begin(), rows[b].end(), out.data() + b * rows[b].size());
  return out;
}

struct CliResult {
  int status = -1;
  std::string out;  // stdout and stderr
};

// Runs `[env] tokenmix <args>` under a 60 s timeout (a hang fails the test instead of the suite); env
// is a prefix of VAR=value assignments, e.g. "ONEDNN_MAX_CPU_ISA=AVX2".
inline CliResult cli(const std::string& args, const std::string& env = "") {
  const std::string cmd = env + " timeout 60 '" + std::string(TOKENMIX_CLI) + "' " + args + " 2>&1";
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace tokenmix::test

// Tests across the suite compare with it unqualified.
namespace tokenmix {
using test::max_abs_diff;
}  // namespace tokenmix
