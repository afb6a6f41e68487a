#include "tokenmix/kernels/precision.h"

#include <cpuid.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <cstring>
#include <dnnl.hpp>

#include "tokenmix/core/cpu.h"
#include "tokenmix/core/error.h"

namespace tokenmix {

namespace {
bool amd_cpu() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  return std::strcmp(vendor, "AuthenticAMD") == 0;
}

// oneDNN's view of the CPU (it honours ONEDNN_MAX_CPU_ISA, so tests can cap it).
const char* isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2: return "avx2";
    default: return "older than avx2";
  }
}
}  // namespace

Precision parse_precision(const std::string& s, const char* fn) {
  if (s == "fp32") return Precision::kFp32;
  if (s == "bf16") return Precision::kBf16;
  if (s == "int8") return Precision::kInt8;
  if (s == "auto") return Precision::kAuto;
  fail(fn, ": precision: expected fp32, bf16, int8 or auto, got '", s, "'");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kFp32: return "fp32";
    case Precision::kBf16: return "bf16";
    case Precision::kInt8: return "int8";
    case Precision::kAuto: return "auto";
  }
  return "?";
}

Precision resolve_precision(Precision p) {
  kernel_isa();  // before oneDNN's first look at its ISA cap, which it may set
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  const bool bf16_units = isa == dnnl::cpu_isa::avx512_core_amx || isa == dnnl::cpu_isa::avx512_core_bf16;
  if (p == Precision::kBf16)
    check(bf16_units, "resolve_precision: bf16: this CPU has no AVX512-BF16 or AMX-BF16 (oneDNN ISA: ", isa_name(isa),
          ")");
  const bool int8_units = bf16_units || isa == dnnl::cpu_isa::avx512_core_vnni;
  if (p == Precision::kInt8)
    check(int8_units, "resolve_precision: int8: this CPU has no AVX512-VNNI or AMX-INT8 (oneDNN ISA: ", isa_name(isa),
          "; oneDNN's int8 runs slower than fp32 without them)");
  if (p != Precision::kAuto) return p;
  const bool bf16_fast = isa == dnnl::cpu_isa::avx512_core_amx || (isa == dnnl::cpu_isa::avx512_core_bf16 && amd_cpu());
  return bf16_fast ? Precision::kBf16 : Precision::kFp32;
}

Precision resolve_precision(const LinearOptions& options) {
  return options.backend == GemmBackend::kReference ? Precision::kFp32 : resolve_precision(options.precision);
}

double precision_gate(Precision p) {
  return p == Precision::kBf16 ? kBf16Gate : p == Precision::kInt8 ? kInt8Gate : 0.0;
}

double scaled_error(const Tensor& y, const Tensor& fp32) {
  double err = 0, scale = 0;
  for (int64_t i = 0; i < fp32.numel(); ++i) {
    scale = std::max(scale, static_cast<double>(std::fabs(fp32.data()[i])));
    const double d = std::fabs(static_cast<double>(y.data()[i]) - fp32.data()[i]);
    err = std::max(err, std::isnan(d) ? std::numeric_limits<double>::infinity() : d);
  }
  return scale > 0 ? err / scale : err;
}

GemmBackend default_gemm_backend() {
  static const GemmBackend backend = [] {
    const char* v = std::getenv("TOKENMIX_GEMM");
    if (v == nullptr || *v == '\0' || std::strcmp(v, "onednn") == 0) return GemmBackend::kOnednn;
    check(std::strcmp(v, "reference") == 0, "default_gemm_backend: TOKENMIX_GEMM: expected onednn or reference, got '",
          v, "'");
    return GemmBackend::kReference;
  }();
  return backend;
}

void LinearOptions::Validate(const char* fn) const {
  check(backend == GemmBackend::kOnednn || precision == Precision::kFp32 || precision == Precision::kAuto, fn,
        ": precision ",
        precision_name(precision), " needs the oneDNN GEMM backend (TOKENMIX_GEMM=reference runs fp32 only)");
}

}  // namespace tokenmix
