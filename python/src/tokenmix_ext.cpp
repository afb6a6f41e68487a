// tokenmix._core: the nanobind extension behind the Python package (python/tokenmix).
//
// It exposes the C++ layers with their upstream-shaped calls (forward_upstream, step, the continual
// step API), the unified Layer / Stream API, the registry (make_layer, supported_modules) and
// safetensors reading / writing. The pure-Python part (python/tokenmix/*.py) turns torch tensors and
// numpy arrays into the C-contiguous float32 / bool arrays taken here and rebuilds the upstream
// forward signatures; this file checks nothing the C++ library checks already.
//
// Arrays: inputs are viewed without a copy (the caller keeps them alive for the call); outputs are
// numpy arrays that own the C++ tensor (no copy) except stream outputs, which view a stream buffer
// reused by the next push and are copied. Every compute call releases the GIL. tokenmix::Error
// becomes ValueError with the C++ message.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>
#include <omp.h>

#include <atomic>
#include <optional>

#include "tokenmix/tokenmix.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace tokenmix {
namespace {

using FloatIn = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using BoolIn = nb::ndarray<const bool, nb::c_contig, nb::device::cpu>;
using Int64In = nb::ndarray<const int64_t, nb::c_contig, nb::device::cpu>;
using FloatOut = nb::ndarray<nb::numpy, float>;
using OptFloat = std::optional<FloatIn>;
using OptBool = std::optional<BoolIn>;

// A stand-in address for zero-element arrays (numpy may hand out null for them, and an empty
// Tensor means "argument absent").
template <typename T>
T* nonnull(T* data) {
  static T empty{};
  return data ? data : &empty;
}

template <typename A>
Shape shape_of(const A& a) {
  std::vector<int64_t> dims(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) dims[i] = static_cast<int64_t>(a.shape(i));
  return Shape(dims);  // throws Error past 4 axes or limits::kMaxElements
}

Tensor view(const FloatIn& a) { return Tensor::view(shape_of(a), nonnull(const_cast<float*>(a.data()))); }
Tensor view(const OptFloat& a) { return a ? view(*a) : Tensor{}; }

// numpy bool is one byte holding 0 or 1, the Mask convention.
Mask view(const BoolIn& a) {
  return Mask::view(shape_of(a), nonnull(reinterpret_cast<uint8_t*>(const_cast<bool*>(a.data()))));
}
Mask view(const OptBool& a) { return a ? view(*a) : Mask{}; }

// A numpy array of T over data, of the given shape, that keeps holder (which owns data) alive.
template <typename T, typename Holder>
nb::ndarray<nb::numpy, T> owning(Holder* holder, T* data, const std::vector<size_t>& shape) {
  nb::capsule owner(holder, [](void* p) noexcept { delete static_cast<Holder*>(p); });
  return nb::ndarray<nb::numpy, T>(nonnull(data), shape.size(), shape.data(), owner);
}

std::vector<size_t> dims_of(const std::vector<int64_t>& dims) { return {dims.begin(), dims.end()}; }

// A numpy array owning t's storage (t shares it; no copy).
FloatOut to_numpy(Tensor t) {
  auto* holder = new Tensor(std::move(t));
  return owning(holder, holder->data(), dims_of(holder->shape().dims()));
}

nb::object to_numpy_or_none(Tensor t) {
  if (t.empty()) return nb::none();
  return nb::cast(to_numpy(std::move(t)));
}

// tokenmix.set_num_threads: 0 = OpenMP's default (OMP_NUM_THREADS, else the cores).
std::atomic<int> g_num_threads{0};

// Runs body with the GIL released and, when set_num_threads(n) was called, n OpenMP threads on the
// calling thread (the previous setting restored after, so torch's own OpenMP use is unchanged).
template <typename F>
auto compute(F&& body) {
  nb::gil_scoped_release release;
  const int n = g_num_threads.load();
  const int saved = omp_get_max_threads();
  if (n > 0) omp_set_num_threads(n);
  struct Restore {
    int n, saved;
    ~Restore() {
      if (n > 0) omp_set_num_threads(saved);
    }
  } restore{n, saved};
  return body();
}

// The layer's own copy of weights (cloned: the layer is a snapshot, whatever later happens to the
// caller's arrays) and read-only numpy views of that copy, which the Python layer keeps for pickling
// and save() at no extra memory where the layer keeps the tensors it was given.
std::pair<StateDict, nb::dict> own_weights(const std::map<std::string, FloatIn>& weights) {
  StateDict sd;
  nb::dict views;
  for (const auto& [key, a] : weights) {
    const Tensor t = view(a).clone();
    sd.set(key, t);
    auto* holder = new Tensor(t);
    views[key.c_str()] = owning<const float>(holder, holder->data(), dims_of(t.shape().dims()));
  }
  return {std::move(sd), std::move(views)};
}

// A checkpoint's weights kept for Layer.state_dict() as stored: BF16 as bfloat16 (half the float32
// bytes), F32 / F16 as float32; owned copies, never views of the file (a file rewritten or truncated
// after the load cannot reach them). Widened to float32 numpy arrays only when asked.
struct StoredWeights {
  StateDict state_dict;
  explicit StoredWeights(const StateDict& from) {
    for (const std::string& key : from.keys()) {
      if (const Bf16Tensor* b = from.bf16(key))
        state_dict.set(key, b->clone());
      else
        state_dict.set(key, from.get(key).clone());
    }
  }
  // Read-only views: a float32 tensor is shared, a BF16 one widened into a new tensor.
  nb::dict to_numpy() const {
    nb::dict out;
    for (const std::string& key : state_dict.keys()) {
      auto* holder = new Tensor(state_dict.get(key));
      out[key.c_str()] = owning<const float>(holder, holder->data(), dims_of(holder->shape().dims()));
    }
    return out;
  }
};

// Every tensor of a safetensors file as numpy arrays of the stored shape (F32/F16/BF16 as float32,
// BOOL as bool, U8 as uint8, I64 as int64), and its metadata.
std::pair<nb::dict, std::map<std::string, std::string>> read_all(const SafetensorsFile& f) {
  nb::dict out;
  for (const std::string& name : f.names()) {
    const TensorInfo& info = f.info(name);
    const std::vector<size_t> shape = dims_of(info.dims);
    switch (info.dtype) {
      case DType::F32:
      case DType::F16:
      case DType::BF16: {
        auto* holder = new Tensor(f.tensor_flat(name).clone());  // writable, not a view of the file
        out[name.c_str()] = owning(holder, holder->data(), shape);
        break;
      }
      case DType::BOOL:
      case DType::U8: {
        auto* holder = new Mask(f.mask(name));
        if (info.dtype == DType::BOOL)
          out[name.c_str()] = owning(holder, reinterpret_cast<bool*>(holder->data()), shape);
        else
          out[name.c_str()] = owning(holder, holder->data(), shape);
        break;
      }
      case DType::I64: {
        auto* holder = new std::vector<int64_t>(f.int64s(name));
        out[name.c_str()] = owning(holder, holder->data(), shape);
        break;
      }
    }
  }
  return {out, f.metadata()};
}

// A safetensors writer filled from a dict of float32 / bool / int64 numpy arrays (C-contiguous; any
// number of axes for float32 and bool, 1-D for int64).
SafetensorsWriter writer_from(const nb::dict& tensors, const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w;
  for (auto [key, value] : tensors) {
    const std::string name = nb::cast<std::string>(key);
    std::vector<int64_t> dims;
    auto flat = [&](const auto& a) {
      int64_t n = 1;
      for (size_t i = 0; i < a.ndim(); ++i) {
        dims.push_back(static_cast<int64_t>(a.shape(i)));
        n = mul_checked(n, dims.back(), "write_safetensors", name.c_str());
      }
      return Shape{n};
    };
    FloatIn f;
    BoolIn b;
    Int64In i;
    if (nb::try_cast(value, f, false)) {
      const Shape s = flat(f);
      w.add(name, Tensor::view(s, nonnull(const_cast<float*>(f.data()))), dims);
    } else if (nb::try_cast(value, b, false)) {
      const Shape s = flat(b);
      w.add(name, Mask::view(s, nonnull(reinterpret_cast<uint8_t*>(const_cast<bool*>(b.data())))), dims);
    } else if (nb::try_cast(value, i, false) && i.ndim() == 1) {
      w.add_int64s(name, std::vector<int64_t>(i.data(), i.data() + i.shape(0)));
    } else {
      fail("write_safetensors: tensors['", name,
           "']: expected a C-contiguous numpy array of float32, bool, or 1-D int64, got ",
           nb::cast<std::string>(nb::str(nb::handle(value.type()))));
    }
  }
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  return w;
}

nb::bytes to_bytes(const std::vector<uint8_t>& v) { return nb::bytes(reinterpret_cast<const char*>(v.data()), v.size()); }

std::vector<uint8_t> from_bytes(const nb::bytes& b) {
  const auto* p = static_cast<const uint8_t*>(b.data());
  return std::vector<uint8_t>(p, p + b.size());
}

}  // namespace
}  // namespace tokenmix

NB_MODULE(_core, m) {
  using namespace tokenmix;
  m.doc() = "tokenmix C++ core (see the tokenmix package for the documented API)";
  if (const std::string missing = missing_build_isa(); !missing.empty())
    throw nb::import_error(("tokenmix: this build uses CPU instructions this CPU lacks (" + missing +
                            "); reinstall from source on this machine, or build the wheel without "
                            "CMAKE_ARGS=-DTOKENMIX_NATIVE=ON").c_str());
  m.attr("build_isa") = build_isa();
  try {
    kernel_isa();  // a bad TOKENMIX_ISA fails the import, not a later call
  } catch (const Error& e) {
    throw nb::import_error(("tokenmix: " + std::string(e.what())).c_str());
  }

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.def("set_num_threads", [](int n) {
    check(n >= 0, "set_num_threads: n: expected >= 0 (0 = the OpenMP default), got ", n);
    g_num_threads = n;
  }, "n"_a, "Sets the OpenMP threads every tokenmix call uses (0 = OpenMP's default: OMP_NUM_THREADS, else\n"
            "the cores). Process-wide; the calling thread's own OpenMP setting (torch's) is restored after each\n"
            "call. Raises ValueError when n < 0.");
  m.def("get_num_threads", [] {
    const int n = g_num_threads.load();
    return n > 0 ? n : omp_get_max_threads();
  }, "The threads tokenmix calls use (set_num_threads, else OpenMP's default).");

  m.def("kernel_isa", [] { return std::string(kernel_isa_name(kernel_isa())); },
        "The SIMD kernel set this process runs: 'avx512_bf16' (AVX2 + FMA kernels, and attention's products in\n"
        "bf16 for layers loaded with precision='bf16'), 'avx2' (AVX2 + FMA) or 'generic' (plain loops), chosen at\n"
        "import from the CPU; the environment variable TOKENMIX_ISA=generic|avx2|avx512_bf16 forces one (generic\n"
        "and avx2 cap oneDNN to match). A TOKENMIX_ISA that names no set, or one this CPU lacks, fails the import (ImportError).");

  m.def("supported_modules", [] {
    std::vector<std::tuple<std::string, std::string, std::vector<std::string>>> out;
    for (const auto& s : supported_modules()) out.emplace_back(s.module, s.family, s.options);
    return out;
  });

  nb::class_<Stream>(m, "Stream")
      .def("push", [](Stream& s, const FloatIn& chunk) {
        return to_numpy(compute([&] { return s.push(view(chunk)).clone(); }));
      }, "chunk"_a)
      .def("output_shape", [](const Stream& s, int64_t chunk) { return s.output_shape(chunk).dims(); }, "chunk"_a)
      .def("delay", &Stream::delay)
      .def("reset", &Stream::reset)
      .def("reset_row", &Stream::reset_row, "b"_a)
      .def("state", [](const Stream& s) { return to_bytes(s.state()); })
      .def("load_state", [](Stream& s, const nb::bytes& b) { s.load_state(from_bytes(b)); }, "state"_a)
      .def("save", [](const Stream& s, const std::string& path) { s.save(path); }, "path"_a)
      .def("restore", [](Stream& s, const std::string& path) { s.restore(path); }, "path"_a);

  nb::class_<Layer>(m, "Layer")
      .def_prop_ro("name", &Layer::name)
      .def_prop_ro("d_model", &Layer::d_model)
      .def_prop_ro("precision", [](const Layer& l) { return std::string(precision_name(l.projection().precision())); })
      .def_prop_ro("gemm", [](const Layer& l) { return l.projection().impl(); })
      .def_prop_ro("weight_bytes", [](const Layer& l) { return l.weight_bytes(); })
      .def("forward", [](const Layer& l, const FloatIn& x, const OptBool& kpm) {
        return to_numpy(compute([&] { return l.forward(view(x), view(kpm)); }));
      }, "x"_a, "key_padding_mask"_a = nb::none())
      .def("stream_reference", [](const Layer& l, const FloatIn& x, int64_t left_context, int64_t window,
                                  int64_t position) {
        return to_numpy(compute([&] { return l.stream_reference(view(x), {left_context, window, position}); }));
      }, "x"_a, "left_context"_a, "window"_a, "position"_a)
      .def("open_stream", [](const Layer& l, int64_t batch, int64_t left_context, int64_t window, int64_t position) {
        return l.open_stream(batch, {left_context, window, position});
      }, "batch"_a, "left_context"_a, "window"_a, "position"_a, nb::keep_alive<0, 1>());

  nb::class_<EspnetMultiHeadedAttention, Layer>(m, "EspnetMultiHeadedAttention")
      .def("forward_upstream", [](const EspnetMultiHeadedAttention& l, const FloatIn& query, const OptFloat& memory,
                                  const OptBool& mask, bool need_attn) {
        Tensor attn;
        Tensor y = compute([&] { return l.forward(view(query), view(memory), view(mask), need_attn ? &attn : nullptr); });
        return std::make_pair(to_numpy(std::move(y)), to_numpy_or_none(std::move(attn)));
      }, "query"_a, "memory"_a.none(), "mask"_a.none(), "need_attn"_a)
      .def("step", [](const EspnetMultiHeadedAttention& l, const FloatIn& query, const OptFloat& memory,
                      const OptBool& mask) {
        return to_numpy(compute([&] { return l.step(view(query), view(memory), view(mask)); }));
      }, "query"_a, "memory"_a.none(), "mask"_a.none());

  nb::class_<ContinualMultiheadAttention, Layer>(m, "ContinualMultiheadAttention")
      .def_prop_ro("sequence_len", &ContinualMultiheadAttention::sequence_len)
      .def("forward_upstream", [](const ContinualMultiheadAttention& l, const FloatIn& query, const OptFloat& key,
                                  const OptFloat& value, const OptBool& key_padding_mask, const OptBool& attn_mask,
                                  bool need_weights) {
        Tensor attn;
        Tensor y = compute([&] {
          return l.forward(view(query), view(key), view(value), view(key_padding_mask), view(attn_mask),
                           need_weights ? &attn : nullptr);
        });
        return std::make_pair(to_numpy(std::move(y)), to_numpy_or_none(std::move(attn)));
      }, "query"_a, "key"_a.none(), "value"_a.none(), "key_padding_mask"_a.none(), "attn_mask"_a.none(),
         "need_weights"_a);
  nb::class_<SingleOutputMultiheadAttention, ContinualMultiheadAttention>(m, "SingleOutputMultiheadAttention");
  nb::class_<RetroactiveMultiheadAttention, ContinualMultiheadAttention>(m, "RetroactiveMultiheadAttention");

  nb::class_<ContinualSteps>(m, "ContinualSteps")
      .def(nb::init<const ContinualMultiheadAttention&>(), "layer"_a, nb::keep_alive<1, 2>())
      .def("forward_step", [](ContinualSteps& s, const FloatIn& q, const OptFloat& k, const OptFloat& v, bool update) {
        return to_numpy_or_none(compute([&] { return s.forward_step(view(q), view(k), view(v), update).clone(); }));
      }, "query"_a, "key"_a.none(), "value"_a.none(), "update_state"_a)
      .def("forward_steps", [](ContinualSteps& s, const FloatIn& q, const OptFloat& k, const OptFloat& v, bool update) {
        return to_numpy_or_none(compute([&] { return s.forward_steps(view(q), view(k), view(v), update).clone(); }));
      }, "query"_a, "key"_a.none(), "value"_a.none(), "update_state"_a)
      .def("clean_state", &ContinualSteps::clean_state);

  nb::class_<HyperMixing, Layer>(m, "HyperMixing")
      .def("forward_upstream", [](const HyperMixing& l, const FloatIn& query, const OptBool& key_padding_mask,
                                  bool need_attn) {
        Tensor attn;
        Tensor y = compute([&] { return l.forward(view(query), view(key_padding_mask), need_attn ? &attn : nullptr); });
        return std::make_pair(to_numpy(std::move(y)), to_numpy_or_none(std::move(attn)));
      }, "query"_a, "key_padding_mask"_a.none(), "need_attn"_a);

  nb::class_<LabmlMultiHeadAttention, Layer>(m, "LabmlMultiHeadAttention")
      .def("forward_upstream", [](const LabmlMultiHeadAttention& l, const FloatIn& query, const FloatIn& key,
                                  const FloatIn& value, const OptBool& mask) {
        return to_numpy(compute([&] {
          return l.forward(view(query), view(key), view(value), view(mask));
        }));
      }, "query"_a, "key"_a, "value"_a, "mask"_a.none());

  nb::class_<FastSelfAttention, Layer>(m, "FastSelfAttention")
      .def("forward_upstream", [](const FastSelfAttention& l, const FloatIn& xs_pad, const OptBool& mask) {
        return to_numpy(compute([&] { return l.forward_upstream(view(xs_pad), view(mask)); }));
      }, "xs_pad"_a, "mask"_a.none());

  m.def("make_layer", [](const std::string& module, const std::string& config,
                         const std::map<std::string, FloatIn>& weights, const std::string& precision) {
    auto [sd, views] = own_weights(weights);
    LinearOptions linear;
    linear.precision = parse_precision(precision, "make_layer");
    return std::make_pair(make_layer(module, config, sd, linear), views);
  }, "module"_a, "config"_a, "weights"_a, "precision"_a = "fp32");

  nb::class_<StoredWeights>(m, "StoredWeights").def("to_numpy", &StoredWeights::to_numpy);

  m.def("load_layer", [](const std::string& path, const std::string& precision) {
    LinearOptions linear;
    linear.precision = parse_precision(precision, "load");
    const SafetensorsFile f(path);
    StateDict sd;
    std::unique_ptr<Layer> layer = load_layer(f, linear, &sd);
    return std::make_tuple(std::move(layer), std::make_unique<StoredWeights>(sd), f.metadata());
  }, "path"_a, "precision"_a = "fp32");
  m.def("read_safetensors", [](const std::string& path) { return read_all(SafetensorsFile(path)); }, "path"_a);
  m.def("read_safetensors_bytes", [](const nb::bytes& b) {
    return read_all(SafetensorsFile::from_bytes(from_bytes(b)));
  }, "data"_a);
  m.def("write_safetensors", [](const std::string& path, const nb::dict& tensors,
                                const std::map<std::string, std::string>& metadata) {
    writer_from(tensors, metadata).write(path);
  }, "path"_a, "tensors"_a, "metadata"_a);
  m.def("safetensors_bytes", [](const nb::dict& tensors, const std::map<std::string, std::string>& metadata) {
    return to_bytes(writer_from(tensors, metadata).bytes());
  }, "tensors"_a, "metadata"_a);
}
