#include "tokenmix/core/checked.h"

namespace tokenmix {

int64_t mul_checked(int64_t a, int64_t b, const char* fn, const char* what) {
  int64_t r = 0;
  check(a >= 0 && b >= 0, fn, ": ", what, ": expected sizes >= 0, got ", a, " x ", b);
  if (__builtin_mul_overflow(a, b, &r) || r > limits::kMaxElements)
    fail(fn, ": ", what, ": size ", a, " x ", b, " overflows (limit ", limits::kMaxElements, " elements)");
  return r;
}

int64_t numel_checked(std::initializer_list<int64_t> dims, const char* fn, const char* what) {
  int64_t n = 1;
  for (const int64_t d : dims) n = mul_checked(n, d, fn, what);
  return n;
}

void check_range(int64_t v, int64_t lo, int64_t hi, const char* fn, const char* arg) {
  check(v >= lo && v <= hi, fn, ": ", arg, ": expected ", lo, " <= ", arg, " <= ", hi, ", got ", v);
}

}  // namespace tokenmix
