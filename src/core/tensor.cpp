#include "tokenmix/core/tensor.h"

#include <algorithm>
#include <new>
#include <cmath>
#include <cstring>

namespace tokenmix {

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(dims.begin(), dims.size()) {}

Shape::Shape(const std::vector<int64_t>& dims) : Shape(dims.data(), dims.size()) {}

Shape::Shape(const int64_t* dims, size_t n) {
  check(n <= static_cast<size_t>(kMaxAxes), "Shape: expected at most ", kMaxAxes, " axes, got ", n);
  ndim_ = static_cast<int>(n);
  int64_t numel = 1;
  for (int i = 0; i < ndim_; ++i) {
    check(dims[i] >= 0, "Shape: axis ", i, ": expected a size >= 0, got ", dims[i]);
    dims_[i] = dims[i];
    numel = mul_checked(numel, dims[i], "Shape", "element count");
  }
}

int64_t Shape::operator[](int i) const {
  const int j = i < 0 ? i + ndim_ : i;
  check(j >= 0 && j < ndim_, "Shape::operator[]: axis ", i, " out of range for ", *this);
  return dims_[j];
}

int64_t Shape::numel() const {
  int64_t n = 1;  // cannot overflow: the constructor checked the product
  for (int i = 0; i < ndim_; ++i) n *= dims_[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  return ndim_ == o.ndim_ && std::equal(dims_.begin(), dims_.begin() + ndim_, o.dims_.begin());
}

std::string Shape::str() const {
  std::string s = "(";
  for (int i = 0; i < ndim_; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
  return s + (ndim_ == 1 ? ",)" : ")");
}

template <typename T>
BasicTensor<T>::BasicTensor(const Shape& shape) : BasicTensor(uninitialized(shape)) {
  std::fill(data_, data_ + numel(), T{});
}

template <typename T>
BasicTensor<T> BasicTensor<T>::uninitialized(const Shape& shape) {
  // (at least one element, so that a zero-size tensor is not empty())
  const int64_t n = std::max<int64_t>(shape.numel(), 1);
  T* data = new (std::nothrow) T[static_cast<size_t>(n)];
  check(data != nullptr, "Tensor: cannot allocate ", n * static_cast<int64_t>(sizeof(T)), " bytes for shape ",
        shape);
  auto storage = std::shared_ptr<T[]>(data);
  return view(shape, storage.get(), storage);
}

template <typename T>
BasicTensor<T>::BasicTensor(const Shape& shape, const std::vector<T>& values) : BasicTensor(uninitialized(shape)) {
  check(static_cast<int64_t>(values.size()) == shape.numel(), "Tensor: values: expected ",
        shape.numel(), " elements for shape ", shape.str(), ", got ", values.size());
  std::copy(values.begin(), values.end(), data_);
}

template <typename T>
BasicTensor<T> BasicTensor<T>::view(const Shape& shape, T* data, std::shared_ptr<void> owner) {
  BasicTensor t;
  t.shape_ = shape;
  t.data_ = data;
  t.owner_ = std::move(owner);
  return t;
}

template <typename T>
BasicTensor<T> BasicTensor<T>::reshape(const Shape& shape) const {
  check(shape.numel() == numel(), "Tensor::reshape: cannot view ", shape_, " as ", shape);
  BasicTensor t = *this;
  t.shape_ = shape;
  return t;
}

template <typename T>
BasicTensor<T> BasicTensor<T>::clone() const {
  if (empty()) return {};  // an absent tensor stays absent (its 0-axis shape would count 1 element)
  BasicTensor t = uninitialized(shape_);
  if (numel() > 0) std::memcpy(t.data_, data_, sizeof(T) * numel());
  return t;
}

template <typename T>
BasicTensor<T> BasicTensor<T>::operator[](int64_t i) const {
  check(ndim() >= 1 && i >= 0 && i < shape_[0], "Tensor::operator[]: index ", i,
        " out of range for shape ", shape_);
  std::vector<int64_t> d = shape_.dims();
  d.erase(d.begin());
  Shape s(d);
  BasicTensor t;
  t.shape_ = s;
  t.data_ = data_ + i * s.numel();
  t.owner_ = owner_;
  return t;
}

template <typename T>
BasicTensor<T> BasicTensor<T>::narrow(int64_t start, int64_t length) const {
  check(ndim() >= 1 && start >= 0 && length >= 0 && start <= shape_[0] - length, "Tensor::narrow: [", start, ", ",
        start + length, ") out of range for shape ", shape_);
  std::vector<int64_t> d = shape_.dims();
  const int64_t stride = d[0] > 0 ? numel() / d[0] : 0;
  d[0] = length;
  BasicTensor t;
  t.shape_ = Shape(d);
  t.data_ = data_ + start * stride;
  t.owner_ = owner_;
  return t;
}

template class BasicTensor<float>;
template class BasicTensor<uint8_t>;

template <typename T>
void check_ndim(const BasicTensor<T>& t, int ndim, const char* fn, const char* arg) {
  check(t.ndim() == ndim, fn, ": ", arg, ": expected a ", ndim, "-D tensor, got shape ",
        t.shape());
}

template <typename T>
void check_shape(const BasicTensor<T>& t, std::initializer_list<int64_t> want_list, const char* fn,
                 const char* arg, std::initializer_list<const char*> axis_names) {
  const int64_t* want = want_list.begin();
  const size_t n = want_list.size();
  bool ok = t.ndim() == static_cast<int>(n);
  for (size_t i = 0; ok && i < n; ++i) ok = want[i] < 0 || want[i] == t.dim(static_cast<int>(i));
  if (ok) return;
  std::string w = "(";
  for (size_t i = 0; i < n; ++i) {
    w += i ? ", " : "";
    if (want[i] >= 0)
      w += std::to_string(want[i]);
    else
      w += i < axis_names.size() ? axis_names.begin()[i] : "*";
  }
  w += n == 1 ? ",)" : ")";
  fail(fn, ": ", arg, ": expected shape ", w, ", got ", t.shape());
}

template void check_ndim(const BasicTensor<float>&, int, const char*, const char*);
template void check_ndim(const BasicTensor<uint8_t>&, int, const char*, const char*);
template void check_shape(const BasicTensor<float>&, std::initializer_list<int64_t>, const char*,
                          const char*, std::initializer_list<const char*>);
template void check_shape(const BasicTensor<uint8_t>&, std::initializer_list<int64_t>, const char*,
                          const char*, std::initializer_list<const char*>);

}  // namespace tokenmix
