#include "cases/case.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>

namespace tokenmix::cases {

bool CaseResult::pass() const {
  for (const auto& c : comparisons)
    if (!c.pass) return false;
  return true;
}

const CaseFamily& family_for(const std::string& module) {
  std::string supported;
  for (const auto& f : families())
    for (const auto& m : f.modules) {
      if (m == module) return f;
      supported += "\n  " + m + " (" + f.family + ")";
    }
  fail("unknown module '", module, "'; supported modules:", supported);
}

Case parse_case(const SafetensorsFile& file) {
  const auto& meta = file.metadata();
  for (const char* key : {"module", "config", "call"})
    check(meta.count(key) != 0, file.path(), ": not a reference case: __metadata__ has no '", key, "'");
  Case c{file, meta.at("module"), {}, {}};
  try {
    c.config = nlohmann::json::parse(meta.at("config"));
    c.call = nlohmann::json::parse(meta.at("call"));
  } catch (const nlohmann::json::exception& e) {
    fail(file.path(), ": __metadata__ config/call is not valid JSON: ", e.what());
  }
  check(c.config.is_object(), file.path(), ": __metadata__ config must be a JSON object");
  return c;
}

StateDict params(const Case& c) { return StateDict::from_file(c.file, "param."); }

std::vector<std::string> registry_modules(const std::string& family) {
  std::vector<std::string> out;
  for (const auto& m : supported_modules())
    if (m.family == family) out.push_back(m.module);
  return out;
}

std::unique_ptr<Layer> build_layer(const Case& c) {
  return make_layer(c.module, c.config.dump(), params(c), c.linear);
}

namespace {

Comparison compare(const std::string& name, const Tensor& got, const SafetensorsFile& file, Tolerance tol) {
  Comparison cmp;
  cmp.name = name;
  if (!file.contains(name)) return cmp;
  const Tensor want = file.tensor_flat(name);
  if (got.numel() != want.numel()) {
    cmp.problem = "produced " + std::to_string(got.numel()) + " elements " + got.shape().str() +
                  ", expected " + std::to_string(want.numel());
    return cmp;
  }
  cmp.pass = true;
  double scale = 0;
  for (int64_t i = 0; i < want.numel(); ++i)
    if (std::isfinite(want.data()[i])) scale = std::max(scale, std::fabs(double(want.data()[i])));
  const double scale_atol = tol.scale * scale;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double a = got.data()[i], e = want.data()[i], d = std::fabs(a - e);
    if (std::isnan(d)) {
      if (std::isnan(a) && std::isnan(e)) continue;  // NaN where the reference has NaN
      cmp.max_abs = cmp.max_rel = NAN;
      cmp.pass = false;
      continue;
    }
    if (!std::isnan(cmp.max_abs)) {
      cmp.max_abs = std::max(cmp.max_abs, d);
      cmp.max_rel = std::max(cmp.max_rel, d / std::max(std::fabs(e), 1e-6));
    }
    if (d > tol.atol + tol.rtol * std::fabs(e) + scale_atol) cmp.pass = false;
  }
  return cmp;
}

}  // namespace

CaseResult run_case(const SafetensorsFile& file, double atol, double rtol, const LinearOptions& linear) {
  Case c = parse_case(file);
  c.linear = linear;
  const Precision runs = resolve_precision(linear);
  const CaseFamily& fam = family_for(c.module);
  Outputs produced;
  try {
    produced = fam.run(c);
  } catch (const nlohmann::json::exception& e) {  // a family read the metadata without the checked accessors
    fail(file.path(), ": malformed case metadata: ", e.what());
  }
  CaseResult r{file.path(), c.module, fam.family, std::move(produced), {}};
  for (const auto& name : file.names()) {
    if (name.rfind("out.", 0) != 0) continue;
    auto it = r.outputs.find(name);
    if (it == r.outputs.end()) {
      if (fam.optional && fam.optional(name)) continue;  // informational, not produced
      Comparison cmp;
      cmp.name = name;
      cmp.problem = "not produced";
      r.comparisons.push_back(cmp);
      continue;
    }
    Tolerance tol = fam.tolerance(name, c);
    if (atol >= 0) tol.atol = atol;
    if (rtol >= 0) tol.rtol = rtol;
    tol.scale = precision_gate(runs);
    r.comparisons.push_back(compare(name, it->second, file, tol));
  }
  return r;
}

void write_outputs(const CaseResult& result, const SafetensorsFile& file, const std::string& path) {
  SafetensorsWriter w;
  for (const auto& [name, t] : result.outputs) {
    std::vector<int64_t> dims;
    if (file.contains(name) && file.info(name).numel == t.numel()) dims = file.info(name).dims;
    w.add(name, t, dims);
  }
  w.set_metadata("module", result.module);
  w.set_metadata("source_case", file.path());
  w.write(path);
}

Tensor slice(const Tensor& t, int axis, int64_t start, int64_t stop) {
  check(axis >= 0 && axis < t.ndim(), "slice: axis ", axis, " out of range for shape ", t.shape());
  check(0 <= start && start <= stop && stop <= t.dim(axis), "slice: [", start, ", ", stop,
        ") out of range for axis ", axis, " of shape ", t.shape());
  std::vector<int64_t> d = t.shape().dims();
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; ++i) outer *= d[i];
  for (int i = axis + 1; i < t.ndim(); ++i) inner *= d[i];
  const int64_t n = d[axis];
  d[axis] = stop - start;
  Tensor out{Shape(d)};
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(out.data() + o * (stop - start) * inner, t.data() + (o * n + start) * inner,
                sizeof(float) * (stop - start) * inner);
  return out;
}

Tensor select(const Tensor& t, int axis, int64_t index) {
  check(axis >= 0 && axis < t.ndim(), "select: axis ", axis, " out of range for shape ", t.shape());
  check(index >= 0 && index < t.dim(axis), "select: index ", index, " out of range for axis ", axis, " of shape ",
        t.shape());
  Tensor s = slice(t, axis, index, index + 1);
  std::vector<int64_t> d = s.shape().dims();
  d.erase(d.begin() + axis);
  return s.reshape(Shape(d));
}

Tensor stack(const std::vector<Tensor>& parts) {
  check(!parts.empty(), "stack: no tensors");
  std::vector<int64_t> d = parts[0].shape().dims();
  d.insert(d.begin(), static_cast<int64_t>(parts.size()));
  if (d.size() > 4) {  // keep at most 4 axes: merge the two leading ones (compared flat)
    d[1] *= d[0];
    d.erase(d.begin());
  }
  Tensor out{Shape(d)};
  float* dst = out.data();
  for (const auto& p : parts) {
    check(p.shape() == parts[0].shape(), "stack: shapes differ: ", p.shape(), " vs ",
          parts[0].shape());
    std::memcpy(dst, p.data(), sizeof(float) * p.numel());
    dst += p.numel();
  }
  return out;
}

namespace {

// "in.x[:, 3, :]" / "in.x[:, :4, :]" / "in.x[:, 1:4]" -> tensor name and per-axis selections.
struct SliceSpec {
  std::string name;
  std::vector<std::string> axes;
};

SliceSpec parse_slice(const std::string& s) {
  SliceSpec spec;
  const auto lb = s.find('[');
  spec.name = s.substr(0, lb);
  if (lb == std::string::npos) return spec;
  check(s.back() == ']', "case call: malformed slice '", s, "'");
  std::string inner = s.substr(lb + 1, s.size() - lb - 2);
  size_t pos = 0;
  while (true) {
    const auto comma = inner.find(',', pos);
    std::string part = inner.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    part.erase(std::remove(part.begin(), part.end(), ' '), part.end());
    spec.axes.push_back(part);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return spec;
}

int64_t parse_bound(const std::string& s, int64_t fallback, int64_t n) {
  if (s.empty()) return fallback;
  int64_t v = 0;
  try {
    size_t used = 0;
    v = std::stoll(s, &used);
    check(used == s.size(), "case call: bad index '", s, "'");
  } catch (const std::logic_error&) {
    fail("case call: bad index '", s, "'");
  }
  check(v >= -n && v <= n, "case call: index ", v, " out of range for an axis of ", n);
  return v < 0 ? v + n : v;
}

}  // namespace

Tensor resolve_tensor(const Case& c, const nlohmann::json& arg) {
  if (arg.is_null()) return {};
  check(arg.is_string(), c.file.path(), ": case call: expected a tensor name, got ", arg.dump());
  const SliceSpec spec = parse_slice(arg.get<std::string>());
  Tensor t = c.file.tensor(spec.name);
  // Apply from the last axis so earlier axis numbers stay valid when an index drops an axis.
  for (int axis = static_cast<int>(spec.axes.size()) - 1; axis >= 0; --axis) {
    const std::string& a = spec.axes[axis];
    if (a == ":" || a.empty()) continue;
    const int64_t n = t.dim(axis);
    const auto colon = a.find(':');
    if (colon == std::string::npos) {
      t = select(t, axis, parse_bound(a, 0, n));
    } else {
      t = slice(t, axis, parse_bound(a.substr(0, colon), 0, n), parse_bound(a.substr(colon + 1), n, n));
    }
  }
  return t;
}

Mask resolve_mask(const Case& c, const nlohmann::json& arg) {
  if (arg.is_null()) return {};
  check(arg.is_string(), c.file.path(), ": case call: expected a mask name, got ", arg.dump());
  const std::string s = arg.get<std::string>();
  check(s.find('[') == std::string::npos, c.file.path(), ": case call: sliced masks are not supported: ", s);
  return c.file.mask(s);
}

namespace {
const nlohmann::json* config_value(const Case& c, const std::string& key) {
  auto it = c.config.find(key);
  return it == c.config.end() || it->is_null() ? nullptr : &*it;
}
}  // namespace

const nlohmann::json& call_field(const Case& c, const nlohmann::json& obj, const char* key) {
  const nlohmann::json* v = obj.is_object() && obj.contains(key) ? &obj[key] : nullptr;
  check(v != nullptr, c.file.path(), ": case call: expected an object with '", key, "', got ", obj.dump());
  return *v;
}

const nlohmann::json* call_field_opt(const Case& c, const nlohmann::json& obj, const char* key) {
  check(obj.is_object(), c.file.path(), ": case call: expected an object, got ", obj.dump());
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string call_string(const Case& c, const nlohmann::json& v, const char* what) {
  check(v.is_string(), c.file.path(), ": case call: ", what, ": expected a string, got ", v.dump());
  return v.get<std::string>();
}

namespace {
// An integer JSON value that fits int64 (a large unsigned one does not).
bool is_int64(const nlohmann::json& v) {
  return v.is_number_integer() &&
         (!v.is_number_unsigned() || v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
}
}  // namespace

int64_t call_int(const Case& c, const nlohmann::json& v, const char* what) {
  check(is_int64(v), c.file.path(), ": case call: ", what, ": expected an integer, got ", v.dump());
  return v.get<int64_t>();
}

int64_t parse_int(const Case& c, const std::string& s, const char* what) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  check(!s.empty() && ec == std::errc() && end == s.data() + s.size(), c.file.path(), ": ", what,
        ": expected an integer, got '", s, "'");
  return v;
}

int64_t config_int(const Case& c, const std::string& key, int64_t fallback) {
  const auto* v = config_value(c, key);
  if (!v) return fallback;
  check(is_int64(*v), c.file.path(), ": config '", key, "': expected an integer, got ", v->dump());
  return v->get<int64_t>();
}

}  // namespace tokenmix::cases
