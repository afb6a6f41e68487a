// The build's assumed extensions come from the compiler's macros in this file, compiled with the
// library's flags (it runs no vector code itself); the check uses __builtin_cpu_supports, which
// reads CPUID at run time.
#include "tokenmix/core/cpu.h"

#include <utility>
#include <vector>

namespace tokenmix {

namespace {

// (name, compiled in) for each extension the kernels or the compiler's own code may use.
std::vector<std::pair<const char*, bool>> assumed() {
  return {
#if defined(__x86_64__) || defined(__i386__)
#if defined(__AVX__)
      {"avx", true},
#endif
#if defined(__AVX2__)
      {"avx2", true},
#endif
#if defined(__FMA__)
      {"fma", true},
#endif
#if defined(__AVX512F__)
      {"avx512f", true},
#endif
#if defined(__AVX512BW__)
      {"avx512bw", true},
#endif
#if defined(__AVX512VL__)
      {"avx512vl", true},
#endif
#if defined(__AVX512DQ__)
      {"avx512dq", true},
#endif
#endif
  };
}

bool cpu_has(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (name == "avx") return __builtin_cpu_supports("avx");
  if (name == "avx2") return __builtin_cpu_supports("avx2");
  if (name == "fma") return __builtin_cpu_supports("fma");
  if (name == "avx512f") return __builtin_cpu_supports("avx512f");
  if (name == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (name == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (name == "avx512dq") return __builtin_cpu_supports("avx512dq");
#endif
  (void)name;
  return true;
}

}  // namespace

std::string build_isa() {
  std::string out;
  for (const auto& [name, on] : assumed())
    if (on) out += (out.empty() ? "" : " ") + std::string(name);
  return out;
}

std::string missing_build_isa() {
  std::string out;
  for (const auto& [name, on] : assumed())
    if (on && !cpu_has(name)) out += (out.empty() ? "" : " ") + std::string(name);
  return out;
}

}  // namespace tokenmix
