// tokenmix/io/state_dict.h: named weights (a PyTorch state_dict) and checked loading into layers.
//
// Keys are the upstream PyTorch state_dict keys, e.g. "linear_q.weight". A checkpoint exported from
// PyTorch with safetensors.torch.save_file(model.state_dict(), path) loads with StateDict::load(path);
// the reference cases store the same keys under the prefix "param.". A BF16 tensor is kept as
// bfloat16 (Bf16Tensor) until something asks for float32: a bf16 layer packs its projections from it
// without ever holding a float32 copy.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "tokenmix/core/tensor.h"
#include "tokenmix/io/safetensors.h"

namespace tokenmix {

class StateDict {
 public:
  StateDict() = default;
  // Every float tensor of file whose name starts with prefix, under its name without the prefix (F32
  // as a view of the mapping where aligned, BF16 as stored, F16 widened). Throws Error (from
  // SafetensorsFile) on a malformed file or a non-float tensor under the prefix.
  static StateDict from_file(const SafetensorsFile& file, const std::string& prefix = "");
  static StateDict load(const std::string& path, const std::string& prefix = "");

  // Stores value under key (replacing what was there, of either type).
  void set(const std::string& key, const Tensor& value);
  void set(const std::string& key, const Bf16Tensor& value);
  bool contains(const std::string& key) const { return tensors_.count(key) != 0 || bf16_.count(key) != 0; }
  // The tensor as float32 (a BF16 one widened, exactly). Throws Error "StateDict::get: no key
  // '<key>'" when absent.
  Tensor get(const std::string& key) const;
  // The tensor's bfloat16 values when it is stored as BF16, else nullptr.
  const Bf16Tensor* bf16(const std::string& key) const;
  std::vector<std::string> keys() const;
  // Writes every tensor under prefix + key (F32, BF16 as stored).
  void save(const std::string& path, const std::string& prefix = "") const;

 private:
  std::map<std::string, Tensor> tensors_;
  std::map<std::string, Bf16Tensor> bf16_;  // keys disjoint from tensors_
};

// Checked loading for a layer constructor: take() every expected key with its expected shape, then
// finish(). finish() throws one Error "<layer>: state_dict: missing keys [...]; unexpected keys [...];
// shape mismatches [key: expected (..), got (..)]" listing every problem at once.
class WeightReader {
 public:
  WeightReader(const StateDict& state_dict, std::string layer);
  // The tensor under key (empty tensor when missing or mis-shaped; finish() then throws).
  Tensor take(const std::string& key, const Shape& shape);
  // As take(), but absence is not an error (returns an empty tensor).
  Tensor take_optional(const std::string& key, const Shape& shape);
  // The bfloat16 values under key when it is stored as BF16 with this shape (nullptr otherwise; use
  // take() then, which records a missing or mis-shaped key). Marks key as used.
  const Bf16Tensor* take_bf16(const std::string& key, const Shape& shape);
  void finish() const;

 private:
  const StateDict& sd_;
  std::string layer_;
  std::set<std::string> used_;
  std::vector<std::string> missing_, mismatched_;
};

}  // namespace tokenmix
