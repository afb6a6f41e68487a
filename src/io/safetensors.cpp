#include "tokenmix/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "tokenmix/core/bf16.h"

namespace tokenmix {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

bool parse_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kTable[] = {{"F32", DType::F32}, {"F16", DType::F16},
                                                         {"BF16", DType::BF16}, {"BOOL", DType::BOOL},
                                                         {"U8", DType::U8},   {"I64", DType::I64}};
  for (const auto& [name, d] : kTable)
    if (s == name) {
      *out = d;
      return true;
    }
  return false;
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

}  // namespace

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::BOOL: return "BOOL";
    case DType::U8: return "U8";
    case DType::I64: return "I64";
  }
  return "?";
}

int64_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::BOOL:
    case DType::U8: return 1;
    case DType::I64: return 8;
  }
  return 0;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const char* fn = "SafetensorsFile";
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the file is refused
  // below unless it is a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  check(fd >= 0, fn, ": ", path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(fn, ": ", path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(fn, ": ", path, ": expected a regular file, got ", S_ISDIR(st.st_mode) ? "a directory" : "a special file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(fn, ": ", path, ": truncated file: ", size, " bytes, expected at least 8 (header length)");
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  check(addr != MAP_FAILED, fn, ": ", path, ": mmap failed: ", std::strerror(errno));
  parse(std::shared_ptr<void>(addr, [size](void* p) { ::munmap(p, size); }), size);
}

SafetensorsFile SafetensorsFile::from_bytes(std::vector<uint8_t> bytes, const std::string& name) {
  SafetensorsFile f;
  f.path_ = name;
  check(bytes.size() >= 8, "SafetensorsFile: ", name, ": truncated: ", bytes.size(),
        " bytes, expected at least 8 (header length)");
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  const uint64_t size = owned->size();
  void* data = owned->data();
  f.parse(std::shared_ptr<void>(owned, data), size);
  return f;
}

void SafetensorsFile::parse(std::shared_ptr<void> mapping, uint64_t size) {
  const char* fn = "SafetensorsFile";
  const std::string& path = path_;
  mapping_ = std::move(mapping);
  const auto* bytes = static_cast<const uint8_t*>(mapping_.get());

  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  check(header_len <= kMaxHeaderBytes, fn, ": ", path, ": header length ", header_len,
        " bytes is absurd (limit ", kMaxHeaderBytes, ")");
  check(header_len <= size - 8, fn, ": ", path, ": truncated file: header length ", header_len,
        " exceeds the ", size - 8, " bytes after the length prefix");
  data_ = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    fail(fn, ": ", path, ": header is not valid JSON: ", e.what());
  }
  check(header.is_object(), fn, ": ", path, ": header must be a JSON object");

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::string> range_names;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      check(v.is_object(), fn, ": ", path, ": __metadata__ must be an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        check(m.value().is_string(), fn, ": ", path, ": __metadata__['", m.key(),
              "'] must be a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = detail::concat(fn, ": ", path, ": tensor '", name, "'");
    check(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
          where, ": entry must be an object with dtype, shape and data_offsets");
    check(v["dtype"].is_string(), where, ": dtype must be a string");
    TensorInfo info{};
    check(parse_dtype(v["dtype"].get<std::string>(), &info.dtype), where, ": unknown dtype '",
          v["dtype"].get<std::string>(), "' (supported: F32, F16, BF16, BOOL, U8, I64)");
    check(v["shape"].is_array(), where, ": shape must be an array");
    info.numel = 1;
    for (const auto& d : v["shape"]) {
      check(d.is_number_integer() && d.get<int64_t>() >= 0, where,
            ": shape entries must be non-negative integers, got ", d.dump());
      const int64_t n = d.get<int64_t>();
      check(n == 0 || info.numel <= std::numeric_limits<int64_t>::max() / 8 / n, where,
            ": element count overflows");
      info.numel *= n;
      info.dims.push_back(n);
    }
    const auto& off = v["data_offsets"];
    check(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
              off[1].is_number_unsigned(),
          where, ": data_offsets must be two non-negative integers");
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    check(info.begin <= info.end, where, ": data_offsets [", info.begin, ", ", info.end,
          ") are reversed");
    check(info.end <= data_size, where, ": data_offsets [", info.begin, ", ", info.end,
          ") out of range: the data section has ", data_size, " bytes (truncated file?)");
    const uint64_t want = static_cast<uint64_t>(info.numel * dtype_size(info.dtype));
    check(info.end - info.begin == want, where, ": byte size ", info.end - info.begin,
          " does not match dtype ", dtype_name(info.dtype), " x shape ", dims_str(info.dims), " = ",
          want, " bytes");
    ranges.emplace_back(info.begin, info.end);
    range_names.push_back(name);
    infos_[name] = info;
  }
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = ranges[order[i - 1]];
    const auto& cur = ranges[order[i]];
    check(cur.first >= prev.second || cur.first == cur.second || prev.first == prev.second, fn, ": ",
          path, ": tensors '", range_names[order[i - 1]], "' and '", range_names[order[i]],
          "' overlap in the data section");
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& kv : infos_) out.push_back(kv.first);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = infos_.find(name);
  check(it != infos_.end(), "SafetensorsFile: ", path_, ": no tensor named '", name, "'");
  return it->second;
}

Tensor SafetensorsFile::float_tensor(const std::string& name, const Shape& shape) const {
  const TensorInfo& in = info(name);
  const uint8_t* src = data_ + in.begin;
  switch (in.dtype) {
    case DType::F32: {
      if (reinterpret_cast<uintptr_t>(src) % alignof(float) == 0)
        return Tensor::view(shape, const_cast<float*>(reinterpret_cast<const float*>(src)), mapping_);
      Tensor t(shape);
      std::memcpy(t.data(), src, 4 * in.numel);
      return t;
    }
    case DType::F16:
    case DType::BF16: {
      Tensor t(shape);
      for (int64_t i = 0; i < in.numel; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        t.data()[i] = in.dtype == DType::F16 ? half_to_float(h) : from_bf16(h);
      }
      return t;
    }
    default:
      fail("SafetensorsFile::tensor: ", path_, ": tensor '", name, "': expected dtype F32, F16 or BF16, got ",
           dtype_name(in.dtype));
  }
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& in = info(name);
  check(in.dims.size() <= static_cast<size_t>(Shape::kMaxAxes), "SafetensorsFile::tensor: ", path_,
        ": tensor '", name, "': shape ", dims_str(in.dims), " has more than 4 axes");
  return float_tensor(name, Shape(in.dims));
}

Tensor SafetensorsFile::tensor_flat(const std::string& name) const {
  std::vector<int64_t> d = info(name).dims;
  while (d.size() > static_cast<size_t>(Shape::kMaxAxes)) {
    d[1] *= d[0];
    d.erase(d.begin());
  }
  return float_tensor(name, Shape(d));
}

Bf16Tensor SafetensorsFile::bf16_tensor(const std::string& name) const {
  const TensorInfo& in = info(name);
  check(in.dtype == DType::BF16, "SafetensorsFile::bf16_tensor: ", path_, ": tensor '", name,
        "': expected dtype BF16, got ", dtype_name(in.dtype));
  check(in.dims.size() <= static_cast<size_t>(Shape::kMaxAxes), "SafetensorsFile::bf16_tensor: ", path_,
        ": tensor '", name, "': shape ", dims_str(in.dims), " has more than 4 axes");
  const uint8_t* src = data_ + in.begin;
  Bf16Tensor t{Shape(in.dims), {}};
  if (reinterpret_cast<uintptr_t>(src) % alignof(uint16_t) == 0) {
    t.data = std::shared_ptr<const uint16_t>(mapping_, reinterpret_cast<const uint16_t*>(src));  // aliases the mapping
  } else {
    std::shared_ptr<uint16_t[]> copy(new uint16_t[std::max<int64_t>(in.numel, 1)]);
    std::memcpy(copy.get(), src, 2 * in.numel);
    t.data = std::shared_ptr<const uint16_t>(copy, copy.get());
  }
  return t;
}

Tensor Bf16Tensor::to_float() const {
  Tensor t(shape);
  const int64_t n = shape.numel();
  for (int64_t i = 0; i < n; ++i) t.data()[i] = from_bf16(data.get()[i]);
  return t;
}

Bf16Tensor Bf16Tensor::narrow(int64_t start, int64_t length) const {
  check(shape.ndim() >= 1 && start >= 0 && length >= 0 && start <= shape[0] - length, "Bf16Tensor::narrow: rows [",
        start, ", ", start, " + ", length, "): out of range for shape ", shape);
  std::vector<int64_t> d = shape.dims();
  d[0] = length;
  const int64_t row = shape[0] ? shape.numel() / shape[0] : 0;
  return {Shape(d), std::shared_ptr<const uint16_t>(data, data.get() + start * row)};
}

namespace {
// A tensor of this shape over fresh, writable storage; *bits receives the storage.
Bf16Tensor new_bf16(const Shape& shape, uint16_t** bits) {
  std::shared_ptr<uint16_t[]> storage(new uint16_t[std::max<int64_t>(shape.numel(), 1)]);
  *bits = storage.get();
  return {shape, std::shared_ptr<const uint16_t>(storage, storage.get())};
}
}  // namespace

Bf16Tensor Bf16Tensor::clone() const {
  uint16_t* bits;
  Bf16Tensor out = new_bf16(shape, &bits);
  std::copy(data.get(), data.get() + shape.numel(), bits);
  return out;
}

Bf16Tensor Bf16Tensor::transposed() const {
  check(shape.ndim() == 2, "Bf16Tensor::transposed: expected a 2-D tensor, got shape ", shape);
  const int64_t rows = shape[0], cols = shape[1];
  uint16_t* bits;
  Bf16Tensor out = new_bf16(Shape{cols, rows}, &bits);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) bits[j * rows + i] = data.get()[i * cols + j];
  return out;
}

Bf16Tensor Bf16Tensor::from_float(const Tensor& x) {
  uint16_t* bits;
  Bf16Tensor out = new_bf16(x.shape(), &bits);
  for (int64_t i = 0; i < x.numel(); ++i) bits[i] = to_bf16(x.data()[i]);
  return out;
}

Mask SafetensorsFile::mask(const std::string& name) const {
  const TensorInfo& in = info(name);
  check(in.dtype == DType::BOOL || in.dtype == DType::U8, "SafetensorsFile::mask: ", path_,
        ": tensor '", name, "': expected dtype BOOL or U8, got ", dtype_name(in.dtype));
  check(in.dims.size() <= static_cast<size_t>(Shape::kMaxAxes), "SafetensorsFile::mask: ", path_,
        ": tensor '", name, "': more than 4 axes");
  Mask m{Shape(in.dims)};
  const uint8_t* src = data_ + in.begin;
  for (int64_t i = 0; i < in.numel; ++i) m.data()[i] = src[i] != 0;
  return m;
}

std::vector<int64_t> SafetensorsFile::int64s(const std::string& name) const {
  const TensorInfo& in = info(name);
  check(in.dtype == DType::I64, "SafetensorsFile::int64s: ", path_, ": tensor '", name,
        "': expected dtype I64, got ", dtype_name(in.dtype));
  std::vector<int64_t> out(in.numel);
  if (in.numel) std::memcpy(out.data(), data_ + in.begin, 8 * in.numel);
  return out;
}

namespace {
std::vector<int64_t> resolve_dims(const std::string& name, const Shape& shape,
                                  const std::vector<int64_t>& dims) {
  if (dims.empty()) return shape.dims();
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  check(n == shape.numel(), "SafetensorsWriter::add: '", name, "': dims ", dims_str(dims),
        " do not match the tensor's ", shape.numel(), " elements");
  return dims;
}
}  // namespace

void SafetensorsWriter::add(const std::string& name, const Tensor& t, const std::vector<int64_t>& dims) {
  check(!entries_.count(name), "SafetensorsWriter::add: duplicate tensor name '", name, "'");
  Entry e{DType::F32, resolve_dims(name, t.shape(), dims), {}};
  e.bytes.resize(4 * t.numel());
  if (t.numel()) std::memcpy(e.bytes.data(), t.data(), e.bytes.size());
  entries_[name] = std::move(e);
}

void SafetensorsWriter::add(const std::string& name, const Bf16Tensor& t, const std::vector<int64_t>& dims) {
  check(!entries_.count(name), "SafetensorsWriter::add: duplicate tensor name '", name, "'");
  Entry e{DType::BF16, resolve_dims(name, t.shape, dims), {}};
  e.bytes.resize(2 * t.shape.numel());
  if (!e.bytes.empty()) std::memcpy(e.bytes.data(), t.data.get(), e.bytes.size());
  entries_[name] = std::move(e);
}

void SafetensorsWriter::add(const std::string& name, const Mask& m, const std::vector<int64_t>& dims) {
  check(!entries_.count(name), "SafetensorsWriter::add: duplicate tensor name '", name, "'");
  Entry e{DType::BOOL, resolve_dims(name, m.shape(), dims), {}};
  e.bytes.assign(m.begin(), m.end());
  for (auto& b : e.bytes) b = b != 0;
  entries_[name] = std::move(e);
}

void SafetensorsWriter::add_int64s(const std::string& name, const std::vector<int64_t>& values) {
  check(!entries_.count(name), "SafetensorsWriter::add_int64s: duplicate tensor name '", name, "'");
  Entry e{DType::I64, {static_cast<int64_t>(values.size())}, {}};
  e.bytes.resize(8 * values.size());
  if (!values.empty()) std::memcpy(e.bytes.data(), values.data(), e.bytes.size());
  entries_[name] = std::move(e);
}

std::vector<std::pair<const void*, size_t>> SafetensorsWriter::pieces(std::string& header_text,
                                                                      uint8_t (&len)[8]) const {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, e] : entries_) {
    header[name] = {{"dtype", dtype_name(e.dtype)},
                    {"shape", e.dims},
                    {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  // (replace: a metadata value that is not valid UTF-8, e.g. a file name, must not make dump throw)
  header_text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header_text.size()) >> (8 * i));
  std::vector<std::pair<const void*, size_t>> out = {{len, 8}, {header_text.data(), header_text.size()}};
  for (const auto& kv : entries_) out.emplace_back(kv.second.bytes.data(), kv.second.bytes.size());
  return out;
}

void SafetensorsWriter::write(const std::string& path) const {
  std::string text;
  uint8_t len[8];
  write_file_atomically(path, pieces(text, len), "SafetensorsWriter::write");
}

std::vector<uint8_t> SafetensorsWriter::bytes() const {
  std::string text;
  uint8_t len[8];
  std::vector<uint8_t> out;
  for (const auto& [data, n] : pieces(text, len))
    out.insert(out.end(), static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + n);
  return out;
}

namespace {

// Writes all of n bytes to fd; false (errno set) on failure.
bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

void write_file_atomically(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces,
                           const char* fn) {
  static std::atomic<uint64_t> counter{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < 100; ++attempt) {
    tmp = detail::concat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  check(fd >= 0, fn, ": '", path, "': cannot create a temporary file next to it: ", std::strerror(errno));
  bool ok = true;
  for (const auto& [data, n] : pieces) ok = ok && write_all(fd, data, n);
  int err = ok ? 0 : errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    fail(fn, ": writing '", path, "' failed: ", std::strerror(err != 0 ? err : EIO), " (nothing was written)");
  }
}

}  // namespace tokenmix
