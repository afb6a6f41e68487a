// tokenmix/core/workspace.h: grow-only scratch memory, reused across calls.
//
// A Workspace holds numbered float buffers that keep their capacity, so a call repeated with the
// same shapes allocates (and page-faults) nothing after its first time. Streams own theirs; offline
// calls and kernels borrow one from a WorkspacePool for the duration of a call (one per concurrent
// caller or worker thread), which replaces thread-local scratch: the pool is owned by the layer or
// kernel that uses it and freed with it.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace tokenmix {

class Workspace {
 public:
  // Buffer `slot` (0, 1, ...) with room for at least max(n, 1) floats (never a null pointer);
  // contents unspecified. A pointer from an earlier call for the same slot is invalid once a larger
  // n grows the buffer.
  float* floats(int slot, int64_t n);
  // Buffer `slot` itself, for code that grows it as it goes (grow only: never shrink it).
  std::vector<float>& buffer(int slot);

 private:
  std::vector<std::vector<float>> buffers_;
};

class WorkspacePool {
 public:
  WorkspacePool() = default;
  // A copy starts empty (scratch is not state), so layers holding a pool stay copyable.
  WorkspacePool(const WorkspacePool&) {}
  WorkspacePool& operator=(const WorkspacePool&) { return *this; }

  // A workspace lent to one user until the lease ends (then it returns to the pool, keeping its
  // buffers). Thread-safe.
  class Lease {
   public:
    Lease(WorkspacePool& pool, std::unique_ptr<Workspace> ws) : pool_(&pool), ws_(std::move(ws)) {}
    Lease(Lease&& o) noexcept : pool_(o.pool_), ws_(std::move(o.ws_)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();
    Workspace& operator*() const { return *ws_; }
    Workspace* operator->() const { return ws_.get(); }

   private:
    WorkspacePool* pool_;
    std::unique_ptr<Workspace> ws_;
  };
  Lease acquire();
  // Makes sure at least `count` workspaces exist with buffer `slot` of n floats each (e.g. one per
  // thread before a stream's first push), so later calls of that size allocate nothing.
  void reserve(int count, int slot, int64_t n);

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<Workspace>> free_;
};

}  // namespace tokenmix
