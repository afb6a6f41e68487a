// tokenmix/core/bf16.h: bfloat16 <-> float32 bit conversions (bfloat16: the upper 16 bits of an IEEE
// float32; 8 significant bits). Used by the bf16 backend, by checkpoint reading and by the tests'
// references, so all of them round the same way.
#pragma once

#include <cstdint>

namespace tokenmix {

// bfloat16 bits of x, rounded to nearest even (a NaN stays a quiet NaN).
inline uint16_t to_bf16(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// The float32 value of bfloat16 bits h (exact).
inline float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  __builtin_memcpy(&x, &u, 4);
  return x;
}

}  // namespace tokenmix
