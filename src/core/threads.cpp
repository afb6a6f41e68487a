#include "tokenmix/core/threads.h"

#include <omp.h>

#include <algorithm>

namespace tokenmix {

ThreadLimit::ThreadLimit(int max_threads) {
  const int current = omp_get_max_threads();
  max_threads = std::max(max_threads, 1);
  if (max_threads < current) {
    saved_ = current;
    omp_set_num_threads(max_threads);
  }
}

ThreadLimit::~ThreadLimit() {
  if (saved_) omp_set_num_threads(saved_);
}

}  // namespace tokenmix
