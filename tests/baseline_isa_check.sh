#!/bin/sh
# tests/baseline_isa_check.sh LIB: in a baseline build, AVX (ymm / zmm) instructions may appear only
# in the kernels compiled inside the TOKENMIX_*_BEGIN / END regions (src/kernels/isa_target.h):
# functions named *_avx2* / *_avx512*, or in tokenmix::tiles / tokenmix::simd (an unoptimised build
# emits their inline helpers out of line). Anything else would run before kernel_isa() has
# checked the CPU, and die of SIGILL on a CPU without AVX2. Exit status 1 names the offenders.
set -eu
lib="$1"
offenders=$(objdump -d --no-show-raw-insn "$lib" | c++filt |
  awk '/^[0-9a-f]+ <.*>:$/ { fn = $0 } /%[yz]mm[0-9]/ { print fn }' | sort -u |
  grep -v -E '_avx2|_avx512|tokenmix::tiles::|tokenmix::simd::' || true)
vector_functions=$(objdump -d --no-show-raw-insn "$lib" | c++filt |
  awk '/^[0-9a-f]+ <.*>:$/ { fn = $0 } /%[yz]mm[0-9]/ { print fn }' | sort -u | wc -l)
if [ "$vector_functions" -eq 0 ]; then
  echo "no AVX code found in $lib: the AVX2 kernels are missing"
  exit 1
fi
if [ -n "$offenders" ]; then
  echo "AVX instructions outside the dispatched kernel regions of $lib:"
  echo "$offenders"
  exit 1
fi
echo "$vector_functions functions with AVX code, all in the dispatched kernel regions"
