// tokenmix/layers/masks.h: mask conversions shared by the layers.
//
// Conventions differ between upstream families (see tests/data/reference/README.md): ESPnet and
// labml masks say True = keep, PyTorch's key_padding_mask says True = padded. The unified Layer API
// takes key_padding_mask (B, T) with True = padded; layers convert at the boundary with these helpers.
#pragma once

#include <cstdint>

#include "tokenmix/core/tensor.h"
#include "tokenmix/kernels/attention.h"

namespace tokenmix {

// key_padding_mask (B, T), True = padded, as the attention kernel's mask over (B, any query, T):
// a view (no copy; keep where the byte is 0). The attention layers' unified forward uses it.
// Throws Error "<fn>: key_padding_mask: expected shape (B, T), got ..." on a shape mismatch.
AttentionMask padding_attention_mask(const Mask& key_padding_mask, int64_t B, int64_t T, const char* fn);

// key_padding_mask (B, T), True = padded  ->  (B, 1, T) keep mask, True = keep (Fastformer's pooling
// reads keep bytes).
// Throws Error "<fn>: key_padding_mask: expected shape (B, T), got ..." on a shape mismatch.
Mask keep_mask_from_padding(const Mask& key_padding_mask, int64_t B, int64_t T, const char* fn);

// (1, T, T) keep mask of the causal band: query i may attend key j iff j <= i and
// (left_context == 0 or i - j < left_context). Throws Error when left_context < 0.
Mask causal_keep_mask(int64_t T, int64_t left_context, const char* fn);

}  // namespace tokenmix
