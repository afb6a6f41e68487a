// tokenmix/core/cpu.h: which instruction sets tokenmix uses on this CPU.
//
// tokenmix is built for baseline x86-64 by default and picks its own SIMD kernels (attention tiles,
// the softmax exp, GELU) at run time, once per process: the AVX2 + FMA set where the CPU has it,
// else the plain loops, plus the bf16 attention products (AVX512-BF16) where the CPU has them. The
// environment variable TOKENMIX_ISA forces a set:
//   TOKENMIX_ISA=generic      the plain loops everywhere; oneDNN capped at SSE4.1 (fp32 only)
//   TOKENMIX_ISA=avx2         the AVX2 kernels; oneDNN capped at AVX2 (no AVX-512, bf16 or int8 GEMMs)
//   TOKENMIX_ISA=avx512_bf16  the AVX2 kernels and the bf16 attention products; oneDNN uncapped
// (an explicit ONEDNN_MAX_CPU_ISA in the environment takes precedence for oneDNN).
//
// A build compiled for its machine (-DTOKENMIX_NATIVE=ON, -march=native) executes AVX2 / AVX-512
// instructions anywhere in the library; moved to a CPU without them it would die of SIGILL at the
// first one. Entry points (the CLI, the Python module) call missing_build_isa() first and refuse to
// run with a clear message instead.
#pragma once

#include <string>

namespace tokenmix {

// The x86 extensions this build was compiled to use, e.g. "avx2 fma avx512f avx512bw avx512vl"
// (empty for the default baseline build).
std::string build_isa();

// Those of build_isa() that this CPU lacks (space-separated; empty when it can run this build).
std::string missing_build_isa();

// The kernel sets tokenmix carries, each including the ones before it.
enum class KernelIsa {
  kGeneric,     // plain C++ loops (the reference of every vector kernel)
  kAvx2,        // AVX2 + FMA (8-lane float)
  kAvx512Bf16,  // + AVX-512 F/BW/VL and AVX512-BF16: attention's Q·Kᵀ and P·V in bf16 (vdpbf16ps)
};

// The set this process runs: TOKENMIX_ISA if set, else the best this CPU has. Chosen on the first
// call (which also applies the oneDNN cap, so the first call must precede any oneDNN use: the
// library's entry points make it) and fixed for the life of the process.
// Throws std::invalid_argument ("kernel_isa: TOKENMIX_ISA ...") when TOKENMIX_ISA names no set, or a
// set this CPU cannot run.
KernelIsa kernel_isa();

// "generic", "avx2" or "avx512_bf16".
const char* kernel_isa_name(KernelIsa isa);

}  // namespace tokenmix
