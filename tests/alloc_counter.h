// tests/alloc_counter.h: counts heap allocations made through operator new / malloc-backed new in
// this test binary (alloc_counter.cpp replaces the global operator new).
#pragma once

#include <cstdint>

namespace tokenmix::test {
// Number of operator new calls since program start (all threads).
int64_t allocation_count();
}  // namespace tokenmix::test
