#include "tokenmix/layers/masks.h"

namespace tokenmix {

AttentionMask padding_attention_mask(const Mask& key_padding_mask, int64_t B, int64_t T, const char* fn) {
  check_shape(key_padding_mask, {B, T}, fn, "key_padding_mask");
  return AttentionMask{key_padding_mask.data(), T, 0, 1, /*keep_value=*/0};
}

Mask keep_mask_from_padding(const Mask& key_padding_mask, int64_t B, int64_t T, const char* fn) {
  check_shape(key_padding_mask, {B, T}, fn, "key_padding_mask");
  Mask keep{Shape{B, 1, T}};
  for (int64_t i = 0; i < B * T; ++i) keep.data()[i] = key_padding_mask.data()[i] == 0;
  return keep;
}

Mask causal_keep_mask(int64_t T, int64_t left_context, const char* fn) {
  check(left_context >= 0, fn, ": left_context: expected >= 0 (0 = unlimited), got ", left_context);
  Mask m{Shape{1, T, T}};
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j <= i; ++j) m.at(0, i, j) = left_context == 0 || i - j < left_context;
  return m;
}

}  // namespace tokenmix
