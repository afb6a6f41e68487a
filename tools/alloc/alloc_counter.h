// tools/alloc/alloc_counter.h: heap accounting for the tests, `tokenmix stream` and `tokenmix bench`.
//
// alloc_counter.cpp replaces the global operator new / delete of the tokenmix executable with
// malloc-based versions that keep a running total of live bytes (malloc_usable_size, so the
// allocator's rounding is included) and its high-water mark. Everything tokenmix allocates goes
// through them (tensors, KV caches, std::vector scratch, thread-local kernel buffers). Not counted:
// OpenBLAS's own buffers (mmap'ed once at start-up, fixed size) and OpenMP thread stacks.
#pragma once

#include <cstdint>

namespace tokenmix::alloc {

// Number of operator new calls since program start (all threads).
int64_t allocation_count();
// Bytes currently live through operator new.
int64_t live_heap_bytes();
// Sets the high-water mark to the current live bytes and returns that value (the baseline).
int64_t reset_heap_peak();
// High-water mark of live bytes since the last reset.
int64_t heap_peak_bytes();

}  // namespace tokenmix::alloc
