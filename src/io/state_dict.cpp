#include "tokenmix/io/state_dict.h"

namespace tokenmix {

StateDict StateDict::from_file(const SafetensorsFile& file, const std::string& prefix) {
  StateDict sd;
  for (const auto& name : file.names())
    if (name.compare(0, prefix.size(), prefix) == 0) sd.set(name.substr(prefix.size()), file.tensor(name));
  return sd;
}

StateDict StateDict::load(const std::string& path, const std::string& prefix) {
  return from_file(SafetensorsFile(path), prefix);
}

const Tensor& StateDict::get(const std::string& key) const {
  auto it = tensors_.find(key);
  check(it != tensors_.end(), "StateDict::get: no key '", key, "'");
  return it->second;
}

std::vector<std::string> StateDict::keys() const {
  std::vector<std::string> out;
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

void StateDict::save(const std::string& path, const std::string& prefix) const {
  SafetensorsWriter w;
  for (const auto& [k, t] : tensors_) w.add(prefix + k, t);
  w.write(path);
}

WeightReader::WeightReader(const StateDict& state_dict, std::string layer)
    : sd_(state_dict), layer_(std::move(layer)) {}

Tensor WeightReader::take_optional(const std::string& key, const Shape& shape) {
  used_.insert(key);
  if (!sd_.contains(key)) return {};
  const Tensor& t = sd_.get(key);
  if (t.shape() != shape) {
    mismatched_.push_back(key + ": expected " + shape.str() + ", got " + t.shape().str());
    return {};
  }
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
