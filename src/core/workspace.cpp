#include "tokenmix/core/workspace.h"

#include <algorithm>

namespace tokenmix {

std::vector<float>& Workspace::buffer(int slot) {
  if (static_cast<int>(buffers_.size()) <= slot) buffers_.resize(slot + 1);
  return buffers_[slot];
}

float* Workspace::floats(int slot, int64_t n) {
  std::vector<float>& b = buffer(slot);
  // At least one element: a zero-size request (an empty sequence) still gets a real pointer, so
  // offsets from it (a head's column, a batch row) are defined.
  const int64_t need = std::max<int64_t>(n, 1);
  if (static_cast<int64_t>(b.size()) < need) b.resize(static_cast<size_t>(need));
  return b.data();
}

WorkspacePool::Lease::~Lease() {
  if (!ws_) return;
  const std::lock_guard<std::mutex> lock(pool_->mutex_);
  pool_->free_.push_back(std::move(ws_));
}

WorkspacePool::Lease WorkspacePool::acquire() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (!free_.empty()) {
      std::unique_ptr<Workspace> ws = std::move(free_.back());
      free_.pop_back();
      return Lease(*this, std::move(ws));
    }
  }
  return Lease(*this, std::make_unique<Workspace>());
}

void WorkspacePool::reserve(int count, int slot, int64_t n) {
  std::vector<Lease> leases;
  for (int i = 0; i < count; ++i) {
    leases.push_back(acquire());
    leases.back()->floats(slot, n);
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  free_.reserve(free_.size() + leases.size());  // returning them below must not allocate later
}

}  // namespace tokenmix
