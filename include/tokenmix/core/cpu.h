// tokenmix/core/cpu.h: the instruction sets this build of tokenmix assumes vs. the ones this CPU has.
//
// A build compiled for its machine (TOKENMIX_NATIVE, -march=native) executes AVX2 / AVX-512
// instructions anywhere in the library; moved to a CPU without them (a wheel or package built
// elsewhere) it would die of SIGILL at the first one. Entry points (the CLI, the Python module)
// call missing_build_isa() first and refuse to run with a clear message instead.
#pragma once

#include <string>

namespace tokenmix {

// The x86 extensions this build was compiled to use, e.g. "avx2 fma avx512f avx512bw avx512vl"
// (empty for a baseline build or another architecture).
std::string build_isa();

// Those of build_isa() that this CPU lacks (space-separated; empty when it can run this build).
std::string missing_build_isa();

}  // namespace tokenmix
