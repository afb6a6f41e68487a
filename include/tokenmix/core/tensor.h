// tokenmix/core/tensor.h: the tensor type every layer consumes and produces.
//
// BasicTensor<T> is a contiguous, row-major array of up to 4 axes. It either owns its storage
// (shared, reference counted: copying a tensor shares the data, clone() deep-copies) or views memory
// owned by someone else (a memory-mapped checkpoint, a stream's buffer); a view keeps an optional
// owner handle alive. Two instantiations are used:
//   Tensor = BasicTensor<float>   float32 activations and weights,
//   Mask   = BasicTensor<uint8_t> boolean masks, one byte per element, 0 = false, 1 = true.
// Axis names in docs follow the field: B batch, T time (tokens), E = d_model, H heads,
// D = head_dim = E / H.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "tokenmix/core/checked.h"
#include "tokenmix/core/error.h"

namespace tokenmix {

// A shape of 0 to 4 axes. Sizes are >= 0.
class Shape {
 public:
  static constexpr int kMaxAxes = 4;
  Shape() = default;
  // Throws Error when more than 4 axes or a negative size are given, or when the element count
  // exceeds limits::kMaxElements (so numel() never overflows).
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);

  int ndim() const { return ndim_; }
  // Size of axis i; negative i counts from the back. Throws Error when i is out of range.
  int64_t operator[](int i) const;
  int64_t numel() const;
  std::vector<int64_t> dims() const { return {dims_.begin(), dims_.begin() + ndim_}; }
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  // "(3, 5, 32)".
  std::string str() const;
  // Streams str(): error messages pass the Shape itself to check(), so the text is only built when
  // the check fails.
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

 private:
  Shape(const int64_t* dims, size_t n);
  int ndim_ = 0;
  std::array<int64_t, kMaxAxes> dims_{};
};

template <typename T>
class BasicTensor {
 public:
  BasicTensor() = default;
  // Owning, zero-initialised tensor. Throws Error "Tensor: cannot allocate N bytes for shape ..."
  // when the memory cannot be had (as do uninitialized() and the values constructor).
  explicit BasicTensor(const Shape& shape);
  // Owning tensor whose elements are left uninitialised, for outputs that the code filling them
  // overwrites completely (a GEMM with beta = 0, the attention kernel): no serial zero-fill pass,
  // and the fresh pages are first touched by the (parallel) kernel that writes them.
  static BasicTensor uninitialized(const Shape& shape);
  // Owning tensor holding a copy of values; throws Error when values.size() != shape.numel().
  BasicTensor(const Shape& shape, const std::vector<T>& values);
  // Non-owning view of data (which must hold shape.numel() elements). owner, when given, is kept
  // alive as long as the view (or any copy of it) lives.
  static BasicTensor view(const Shape& shape, T* data, std::shared_ptr<void> owner = nullptr);

  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  bool empty() const { return data_ == nullptr; }
  T* data() { return data_; }
  const T* data() const { return data_; }
  T* begin() { return data_; }
  T* end() { return data_ + numel(); }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + numel(); }

  // Same data, new shape of equal numel. Throws Error on a numel mismatch.
  BasicTensor reshape(const Shape& shape) const;
  // Deep copy into a new owning tensor.
  BasicTensor clone() const;
  // View of index i along axis 0 (shape without axis 0). Throws Error when i is out of range.
  BasicTensor operator[](int64_t i) const;
  // View of indices [start, start + length) along axis 0 (as torch.narrow(0, start, length)); the
  // storage stays alive as long as the view. Throws Error when the range is out of bounds.
  BasicTensor narrow(int64_t start, int64_t length) const;

  // Element access by 1 to 4 indices (no bounds checks: use for tests and reference paths).
  T& at(int64_t i0) { return data_[i0]; }
  T& at(int64_t i0, int64_t i1) { return data_[i0 * shape_[1] + i1]; }
  T& at(int64_t i0, int64_t i1, int64_t i2) { return data_[(i0 * shape_[1] + i1) * shape_[2] + i2]; }
  T& at(int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return data_[((i0 * shape_[1] + i1) * shape_[2] + i2) * shape_[3] + i3];
  }
  const T& at(int64_t i0) const { return data_[i0]; }
  const T& at(int64_t i0, int64_t i1) const { return data_[i0 * shape_[1] + i1]; }
  const T& at(int64_t i0, int64_t i1, int64_t i2) const {
    return data_[(i0 * shape_[1] + i1) * shape_[2] + i2];
  }
  const T& at(int64_t i0, int64_t i1, int64_t i2, int64_t i3) const {
    return data_[((i0 * shape_[1] + i1) * shape_[2] + i2) * shape_[3] + i3];
  }

 private:
  Shape shape_;
  T* data_ = nullptr;
  std::shared_ptr<void> owner_;
};

using Tensor = BasicTensor<float>;
using Mask = BasicTensor<uint8_t>;

// Throws Error "<fn>: <arg>: expected <ndim>-D tensor, got <shape>" when t.ndim() != ndim.
template <typename T>
void check_ndim(const BasicTensor<T>& t, int ndim, const char* fn, const char* arg);

// Throws Error "<fn>: <arg>: expected shape <want>, got <actual>" unless every axis matches; an axis
// given as -1 in want matches any size (printed by its name in axis_names when given, e.g. "B").
// Allocates nothing unless it throws (streams call it on every push).
template <typename T>
void check_shape(const BasicTensor<T>& t, std::initializer_list<int64_t> want, const char* fn,
                 const char* arg, std::initializer_list<const char*> axis_names = {});

}  // namespace tokenmix
