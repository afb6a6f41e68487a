// tokenmix/core/checked.h: overflow-checked size arithmetic and the documented size limits.
//
// Every size that comes from a file (a checkpoint's config, a case, a saved stream state) is range
// checked against the limits below before anything is allocated, and every element-count product
// of such sizes is formed with mul_checked / numel_checked, so a hostile value ends in a
// tokenmix::Error naming the function and the argument instead of a signed overflow, a wrapped
// allocation size or std::bad_alloc.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "tokenmix/core/error.h"

namespace tokenmix {

namespace limits {
// Feature-like sizes: d_model (E), heads, head_dim, hypernet_size, kdim, vdim, kernel_size.
inline constexpr int64_t kMaxFeatures = int64_t{1} << 16;
// Token-like sizes of a layer's configuration or a stream's options: HyperMixing max_length,
// continual sequence_len, window, left_context.
inline constexpr int64_t kMaxTokens = int64_t{1} << 20;
// Batch rows of a stream.
inline constexpr int64_t kMaxBatch = int64_t{1} << 20;
// Tokens a stream may see between resets (its counters); a push past it throws.
inline constexpr int64_t kMaxStreamTokens = int64_t{1} << 62;
// Elements of one tensor (so that its byte size fits int64 for any element type up to 8 bytes).
inline constexpr int64_t kMaxElements = int64_t{1} << 60;
}  // namespace limits

// a * b for sizes a, b >= 0. Throws Error "<fn>: <what>: size a x b overflows" when the product
// exceeds limits::kMaxElements.
int64_t mul_checked(int64_t a, int64_t b, const char* fn, const char* what);
// The product of dims (each >= 0), checked as mul_checked.
int64_t numel_checked(std::initializer_list<int64_t> dims, const char* fn, const char* what);
// Throws Error "<fn>: <arg>: expected lo <= arg <= hi, got v" unless lo <= v <= hi.
void check_range(int64_t v, int64_t lo, int64_t hi, const char* fn, const char* arg);

}  // namespace tokenmix
