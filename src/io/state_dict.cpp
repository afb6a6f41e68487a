#include "tokenmix/io/state_dict.h"

namespace tokenmix {

StateDict StateDict::from_file(const SafetensorsFile& file, const std::string& prefix) {
  StateDict sd;
  for (const auto& name : file.names())
    if (name.compare(0, prefix.size(), prefix) == 0) {
      if (file.info(name).dtype == DType::BF16)
        sd.set(name.substr(prefix.size()), file.bf16_tensor(name));
      else
        sd.set(name.substr(prefix.size()), file.tensor(name));
    }
  return sd;
}

StateDict StateDict::load(const std::string& path, const std::string& prefix) {
  return from_file(SafetensorsFile(path), prefix);
}

void StateDict::set(const std::string& key, const Tensor& value) {
  bf16_.erase(key);
  tensors_[key] = value;
}

void StateDict::set(const std::string& key, const Bf16Tensor& value) {
  tensors_.erase(key);
  bf16_[key] = value;
}

Tensor StateDict::get(const std::string& key) const {
  if (const Bf16Tensor* b = bf16(key)) return b->to_float();
  auto it = tensors_.find(key);
  check(it != tensors_.end(), "StateDict::get: no key '", key, "'");
  return it->second;
}

const Bf16Tensor* StateDict::bf16(const std::string& key) const {
  auto it = bf16_.find(key);
  return it == bf16_.end() ? nullptr : &it->second;
}

std::vector<std::string> StateDict::keys() const {
  std::set<std::string> all;
  for (const auto& kv : tensors_) all.insert(kv.first);
  for (const auto& kv : bf16_) all.insert(kv.first);
  return {all.begin(), all.end()};
}

void StateDict::save(const std::string& path, const std::string& prefix) const {
  SafetensorsWriter w;
  for (const auto& [k, t] : tensors_) w.add(prefix + k, t);
  for (const auto& [k, t] : bf16_) w.add(prefix + k, t);
  w.write(path);
}

WeightReader::WeightReader(const StateDict& state_dict, std::string layer)
    : sd_(state_dict), layer_(std::move(layer)) {}

Tensor WeightReader::take_optional(const std::string& key, const Shape& shape) {
  used_.insert(key);
  if (!sd_.contains(key)) return {};
  // The stored shape is checked before a BF16 tensor is widened.
  const Bf16Tensor* stored = sd_.bf16(key);
  const Shape got = stored ? stored->shape : sd_.get(key).shape();
  if (got != shape) {
    mismatched_.push_back(key + ": expected " + shape.str() + ", got " + got.str());
    return {};
  }
  return sd_.get(key);
}

const Bf16Tensor* WeightReader::take_bf16(const std::string& key, const Shape& shape) {
  const Bf16Tensor* t = sd_.bf16(key);
  if (!t || t->shape != shape) return nullptr;
  used_.insert(key);
  return t;
}

Tensor WeightReader::take(const std::string& key, const Shape& shape) {
  if (!sd_.contains(key)) {
    used_.insert(key);
    missing_.push_back(key);
    return {};
  }
  return take_optional(key, shape);
}

void WeightReader::finish() const {
  std::vector<std::string> unexpected;
  for (const auto& k : sd_.keys())
    if (!used_.count(k)) unexpected.push_back(k);
  if (missing_.empty() && unexpected.empty() && mismatched_.empty()) return;
  auto list = [](const std::vector<std::string>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
    return s + "]";
  };
  std::string msg = layer_ + ": state_dict:";
  if (!missing_.empty()) msg += " missing keys " + list(missing_) + ";";
  if (!unexpected.empty()) msg += " unexpected keys " + list(unexpected) + ";";
  if (!mismatched_.empty()) msg += " shape mismatches " + list(mismatched_) + ";";
  msg.pop_back();
  throw Error(msg);
}

}  // namespace tokenmix
