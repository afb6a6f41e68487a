// tools/alloc/alloc_counter.cpp: counting global operator new / delete (see alloc_counter.h).
#include "alloc/alloc_counter.h"

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

namespace tokenmix::alloc {

namespace {

std::atomic<int64_t> g_live{0}, g_peak{0}, g_count{0};

void note_alloc(void* p) {
  if (!p) return;
  g_count.fetch_add(1, std::memory_order_relaxed);
  const int64_t n = static_cast<int64_t>(malloc_usable_size(p));
  const int64_t now = g_live.fetch_add(n, std::memory_order_relaxed) + n;
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void note_free(void* p) {
  if (p) g_live.fetch_sub(static_cast<int64_t>(malloc_usable_size(p)), std::memory_order_relaxed);
}

void* counted_alloc(std::size_t n) {
  void* p = std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  note_alloc(p);
  return p;
}

void* counted_aligned_alloc(std::size_t n, std::align_val_t al) {
  void* p = nullptr;
  const std::size_t a = std::max(static_cast<std::size_t>(al), sizeof(void*));
  if (posix_memalign(&p, a, n ? n : 1) != 0) throw std::bad_alloc();
  note_alloc(p);
  return p;
}

void counted_free(void* p) {
  note_free(p);
  std::free(p);
}

}  // namespace

int64_t allocation_count() { return g_count.load(); }
int64_t live_heap_bytes() { return g_live.load(); }
int64_t reset_heap_peak() {
  const int64_t now = g_live.load();
  g_peak.store(now);
  return now;
}
int64_t heap_peak_bytes() { return g_peak.load(); }

}  // namespace tokenmix::alloc



void* operator new(std::size_t n) { return tokenmix::alloc::counted_alloc(n); }
void* operator new[](std::size_t n) { return tokenmix::alloc::counted_alloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return tokenmix::alloc::counted_alloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void* operator new(std::size_t n, std::align_val_t a) { return tokenmix::alloc::counted_aligned_alloc(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return tokenmix::alloc::counted_aligned_alloc(n, a); }
void operator delete(void* p) noexcept { tokenmix::alloc::counted_free(p); }
void operator delete[](void* p) noexcept { tokenmix::alloc::counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { tokenmix::alloc::counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { tokenmix::alloc::counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { tokenmix::alloc::counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { tokenmix::alloc::counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { tokenmix::alloc::counted_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { tokenmix::alloc::counted_free(p); }
