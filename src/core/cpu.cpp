// The build's assumed extensions come from the compiler's macros in this file, compiled with the
// library's flags (it runs no vector code itself); whether the CPU has them, from
// __builtin_cpu_supports, which reads CPUID (and the OS's XSAVE state for AVX) at run time.
#include "tokenmix/core/cpu.h"

#include <oneapi/dnnl/dnnl.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "tokenmix/core/error.h"

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

bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool cpu_has_avx512_bf16() {
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

KernelIsa best_kernel_isa() {
  return cpu_has_avx512_bf16() ? KernelIsa::kAvx512Bf16 : cpu_has_avx2_fma() ? KernelIsa::kAvx2 : KernelIsa::kGeneric;
}

// The set TOKENMIX_ISA asks for (or the CPU's best), with oneDNN capped to match when the user
// forced a set and left ONEDNN_MAX_CPU_ISA alone.
KernelIsa choose_kernel_isa() {
  const char* env = std::getenv("TOKENMIX_ISA");
  if (!env || !*env) return best_kernel_isa();
  KernelIsa isa;
  dnnl_cpu_isa_t dnnl_cap;
  if (std::strcmp(env, "generic") == 0) {
    isa = KernelIsa::kGeneric;
    dnnl_cap = dnnl_cpu_isa_sse41;
  } else if (std::strcmp(env, "avx2") == 0) {
    check(cpu_has_avx2_fma(), "kernel_isa: TOKENMIX_ISA: 'avx2' needs a CPU with AVX2 and FMA; this one lacks them");
    isa = KernelIsa::kAvx2;
    dnnl_cap = dnnl_cpu_isa_avx2;
  } else if (std::strcmp(env, "avx512_bf16") == 0) {
    check(cpu_has_avx512_bf16(),
          "kernel_isa: TOKENMIX_ISA: 'avx512_bf16' needs a CPU with AVX-512 F/BW/VL and AVX512-BF16; this one lacks "
          "them");
    return KernelIsa::kAvx512Bf16;  // the best set: oneDNN keeps its own choice
  } else {
    fail("kernel_isa: TOKENMIX_ISA: expected 'generic', 'avx2' or 'avx512_bf16' (or unset: the best this CPU has), "
         "got '", env, "'");
  }
  const char* dnnl_env = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (!dnnl_env || !*dnnl_env)
    check(dnnl_set_max_cpu_isa(dnnl_cap) == dnnl_success,
          "kernel_isa: TOKENMIX_ISA=", env, ": oneDNN was used before the kernel set was chosen, so its ISA cap "
          "cannot be applied (call kernel_isa() first)");
  return isa;
}

}  // namespace

KernelIsa kernel_isa() {
  static const KernelIsa isa = choose_kernel_isa();  // a throw leaves it unset: the next call throws again
  return isa;
}

const char* kernel_isa_name(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kGeneric: return "generic";
    case KernelIsa::kAvx2: return "avx2";
    case KernelIsa::kAvx512Bf16: return "avx512_bf16";
  }
  return "?";
}

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
