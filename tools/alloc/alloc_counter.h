// tools/alloc/alloc_counter.h: counts heap allocations (operator new) in the program that links
// alloc_counter.cpp, which replaces the global operator new. Linked into the tests and the CLI
// (`tokenmix stream` reports allocations per push); never into the library.
#pragma once

#include <cstdint>

namespace tokenmix::alloc {
// Number of operator new calls since program start (all threads).
int64_t allocation_count();
}  // namespace tokenmix::alloc
