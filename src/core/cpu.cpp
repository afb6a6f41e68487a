// The build's assumed extensions come from the compiler's macros in this file, compiled with the
// library's flags (it runs no vector code itself); whether the CPU has them, from
// __builtin_cpu_supports, which reads CPUID at run time.
#include "tokenmix/core/cpu.h"

#include <vector>

namespace tokenmix {

namespace {

// An extension this build was compiled to use (the compiler may emit its instructions anywhere).
struct Extension {
  const char* name;
  int present;  // this CPU has it (__builtin_cpu_supports: non-zero)
};

// Every extension compiled in, of those the kernels or the compiler's own code may use.
std::vector<Extension> extensions() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return {
#ifdef __AVX__
      {"avx", __builtin_cpu_supports("avx")},
#endif
#ifdef __AVX2__
      {"avx2", __builtin_cpu_supports("avx2")},
#endif
#ifdef __FMA__
      {"fma", __builtin_cpu_supports("fma")},
#endif
#ifdef __AVX512F__
      {"avx512f", __builtin_cpu_supports("avx512f")},
#endif
#ifdef __AVX512BW__
      {"avx512bw", __builtin_cpu_supports("avx512bw")},
#endif
#ifdef __AVX512VL__
      {"avx512vl", __builtin_cpu_supports("avx512vl")},
#endif
#ifdef __AVX512DQ__
      {"avx512dq", __builtin_cpu_supports("avx512dq")},
#endif
  };
#else
  return {};
#endif
}

}  // namespace

std::string build_isa() {
  std::string out;
  for (const Extension& e : extensions()) out += (out.empty() ? "" : " ") + std::string(e.name);
  return out;
}

std::string missing_build_isa() {
  std::string out;
  for (const Extension& e : extensions())
    if (!e.present) out += (out.empty() ? "" : " ") + std::string(e.name);
  return out;
}

}  // namespace tokenmix
