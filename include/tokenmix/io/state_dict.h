// tokenmix/io/state_dict.h: named weights (a PyTorch state_dict) and checked loading into layers.
//
// Keys are the upstream PyTorch state_dict keys, e.g. "linear_q.weight". A checkpoint exported from
// PyTorch with safetensors.torch.save_file(model.state_dict(), path) loads with StateDict::load(path);
// the reference cases store the same keys under the prefix "param.".
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
  // Every float tensor of file whose name starts with prefix, under its name without the prefix.
  // Throws Error (from SafetensorsFile) on a malformed file or a non-float tensor under the prefix.
  static StateDict from_file(const SafetensorsFile& file, const std::string& prefix = "");
  static StateDict load(const std::string& path, const std::string& prefix = "");

  void set(const std::string& key, const Tensor& value) { tensors_[key] = value; }
  bool contains(const std::string& key) const { return tensors_.count(key) != 0; }
  // Throws Error "StateDict::get: no key '<key>'" when absent.
  const Tensor& get(const std::string& key) const;
  std::vector<std::string> keys() const;
  // Writes every tensor under prefix + key.
  void save(const std::string& path, const std::string& prefix = "") const;

 private:
  std::map<std::string, Tensor> tensors_;
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
  void finish() const;

 private:
  const StateDict& sd_;
  std::string layer_;
  std::set<std::string> used_;
  std::vector<std::string> missing_, mismatched_;
};

}  // namespace tokenmix
