// src/kernels/isa_target.h (private): compiles a region of a kernel file for a wider instruction set
// inside a baseline build. Functions defined between TOKENMIX_AVX2_BEGIN and TOKENMIX_AVX2_END
// (AVX2 + FMA), or TOKENMIX_AVX512_BF16_BEGIN / END (AVX-512 F/BW/VL + AVX512-BF16), templates and
// inline helpers too, carry the target attribute; code outside, and library templates instantiated
// from inside (std::min, std::vector), stay baseline, so no such instruction can leak into code that
// runs before kernel_isa() has checked the CPU. Include every header before BEGIN. A function in a
// region is only called once kernel_isa() is at least that region's set.
#pragma once

#include <immintrin.h>

#if defined(__clang__)
#define TOKENMIX_AVX2_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma\"))), apply_to = function)")
#define TOKENMIX_AVX2_END _Pragma("clang attribute pop")
#define TOKENMIX_AVX512_BF16_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16\"))), apply_to = function)")
#define TOKENMIX_AVX512_BF16_END _Pragma("clang attribute pop")
#elif defined(__GNUC__)
#define TOKENMIX_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")
#define TOKENMIX_AVX2_END _Pragma("GCC pop_options")
#define TOKENMIX_AVX512_BF16_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16\")")
#define TOKENMIX_AVX512_BF16_END _Pragma("GCC pop_options")
#else
#error "tokenmix's kernels need GCC or clang (target attributes)"
#endif
