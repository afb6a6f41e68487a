// tests/alloc_counter.h: counts global operator new calls (all threads), for "no heap allocation per
// push" tests. alloc_counter.cpp replaces the global operator new/delete of the test binary with
// malloc/free-based versions that count; nothing else changes.
#pragma once

#include <cstdint>

namespace tokenmix::test {

// Number of operator new calls since program start.
int64_t allocation_count();

// Counts operator new calls between construction and count().
class AllocationScope {
 public:
  AllocationScope() : start_(allocation_count()) {}
  int64_t count() const { return allocation_count() - start_; }

 private:
  int64_t start_;
};

}  // namespace tokenmix::test
