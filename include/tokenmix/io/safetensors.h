// tokenmix/io/safetensors.h: reading (memory-mapped) and writing safetensors files.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes
// of UTF-8 JSON {name: {"dtype", "shape", "data_offsets": [begin, end)}, "__metadata__": {str: str}},
// then the raw little-endian, row-major data section.
//
// Files are untrusted input. SafetensorsFile validates everything when it opens a file and throws
// tokenmix::Error naming the file (and the tensor) when: the path is not a regular file (a directory,
// a FIFO or a device is refused before it is read, so a FIFO cannot block); the file is shorter than 8 bytes or than the
// header; the header length is absurd (> 100 MiB or past the end of the file); the header is not
// valid JSON or not an object; an entry lacks dtype/shape/data_offsets or has values of the wrong type;
// the dtype is unknown; a size is negative or the element count overflows; data_offsets are reversed,
// past the end of the data section or overlap another tensor; the byte size disagrees with
// dtype x shape; __metadata__ is not a string-to-string map.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenmix/core/tensor.h"

namespace tokenmix {

enum class DType { F32, F16, BF16, BOOL, U8, I64 };

// "F32", "F16", ...
const char* dtype_name(DType dtype);
// Bytes per element.
int64_t dtype_size(DType dtype);

// A tensor's bfloat16 values as a BF16 checkpoint stores them (raw bits, row-major), read without
// widening so that a bf16 projection packs straight from them (Linear, kernels/linear.h). data stays
// valid while any copy of the struct lives (it shares the file mapping, or owns a copy).
struct Bf16Tensor {
  Shape shape;
  std::shared_ptr<const uint16_t> data;  // shape.numel() values
  bool empty() const { return data == nullptr; }
  // Rows [start, start + length) of axis 0, sharing data. Throws Error "Bf16Tensor::narrow: ..." when
  // out of range.
  Bf16Tensor narrow(int64_t start, int64_t length) const;
  // A new tensor holding a copy of the values (not sharing data).
  Bf16Tensor clone() const;
  // A new (cols, rows) tensor holding this (rows, cols) one transposed. Throws Error
  // "Bf16Tensor::transposed: ..." unless it is 2-D.
  Bf16Tensor transposed() const;
  // The values as float32 (exact: every bf16 value is a float32 value).
  Tensor to_float() const;
  // x rounded to bfloat16, nearest even (to_bf16 of kernels/precision.h).
  static Bf16Tensor from_float(const Tensor& x);
};

struct TensorInfo {
  DType dtype;
  std::vector<int64_t> dims;  // any number of axes, as stored
  int64_t numel;
  uint64_t begin, end;  // byte offsets into the data section, end exclusive
};

class SafetensorsFile {
 public:
  // Maps and validates path. Throws Error (see above) or when the file cannot be opened.
  explicit SafetensorsFile(const std::string& path);
  // The same, over the bytes of a safetensors file held in memory (e.g. SafetensorsWriter::bytes());
  // name stands for the path in path() and in errors.
  static SafetensorsFile from_bytes(std::vector<uint8_t> bytes, const std::string& name = "<memory>");

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Tensor names in sorted order.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  // Throws Error "<path>: no tensor named '<name>'" when absent.
  const TensorInfo& info(const std::string& name) const;

  // The tensor as float32 (F32 is a zero-copy view of the mapping when aligned; F16 and BF16 are
  // converted). Throws Error when absent, when the dtype is not F32/F16/BF16, or when it has more than
  // 4 axes (use tensor_flat).
  Tensor tensor(const std::string& name) const;
  // As tensor(), but leading axes are merged so that at most 4 remain (a 5-D (S, B, H, 1, T) tensor
  // becomes (S*B, H, 1, T)); info(name).dims keeps the stored shape.
  Tensor tensor_flat(const std::string& name) const;
  // A BF16 tensor's raw values, without widening (a view of the mapping when 2-byte aligned, else a
  // copy). Throws Error when absent, when the dtype is not BF16, or with more than 4 axes.
  Bf16Tensor bf16_tensor(const std::string& name) const;
  // A BOOL or U8 tensor as a Mask (0/1 bytes; any non-zero BOOL byte is read as 1).
  Mask mask(const std::string& name) const;
  // An I64 tensor's values.
  std::vector<int64_t> int64s(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<void> mapping_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
  Tensor float_tensor(const std::string& name, const Shape& shape) const;
  SafetensorsFile() = default;
  // Validates the size bytes held by mapping (the header and every entry; see above).
  void parse(std::shared_ptr<void> mapping, uint64_t size);
};

// Collects tensors and metadata and writes one safetensors file (F32 for Tensor, BF16 for Bf16Tensor, BOOL for Mask,
// tensors in sorted name order, header padded with spaces to a multiple of 8).
class SafetensorsWriter {
 public:
  // dims overrides the stored shape (same numel; may have more than 4 axes). Throws Error on a
  // duplicate name or a numel mismatch.
  void add(const std::string& name, const Tensor& t, const std::vector<int64_t>& dims = {});
  void add(const std::string& name, const Mask& m, const std::vector<int64_t>& dims = {});
  void add(const std::string& name, const Bf16Tensor& t, const std::vector<int64_t>& dims = {});
  // A 1-D I64 tensor (counters, positions).
  void add_int64s(const std::string& name, const std::vector<int64_t>& values);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // The file's bytes in memory (what write() would write).
  std::vector<uint8_t> bytes() const;
  // Writes to a temporary file next to path and renames it into place once complete, so path holds
  // either its old content or the whole new file, never a partial one. Throws Error (and removes
  // the temporary file) when the file cannot be written (missing directory, no space, read-only).
  void write(const std::string& path) const;

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> dims;
    std::vector<uint8_t> bytes;
  };
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
  // The file as (pointer, size) pieces: the length prefix (in len), the header (in header_text), then
  // every tensor's bytes.
  std::vector<std::pair<const void*, size_t>> pieces(std::string& header_text, uint8_t (&len)[8]) const;
};

// Writes the concatenation of pieces (pointer, byte count) to path atomically, as
// SafetensorsWriter::write; fn prefixes the error.
void write_file_atomically(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces,
                           const char* fn);

}  // namespace tokenmix
