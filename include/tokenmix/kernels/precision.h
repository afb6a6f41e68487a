// tokenmix/kernels/precision.h: the arithmetic a projection (Linear) runs in, and the GEMM backend.
//
// fp32: float32 weights, inputs and accumulation (the reference numbers).
// bf16: weights rounded to bfloat16 (nearest even) once at load, each input row rounded to bfloat16
//       per call; products accumulate in float32 and the output is float32. About 2^-9 relative
//       error per product, ~1e-3 of the output's scale on the layers here (tests/precision_test.cpp
//       gates every family on every reference case).
// int8: weights quantized once per output feature (symmetric, scale max |W[n, :]| / 127), each input
//       row quantized per call on its own scale (max |x[m, :]| / 127); int8 x int8 products with
//       int32 accumulation, rescaled to float32 (oneDNN's s8 matmul on VNNI / AMX). About 1e-2 of the
//       output's scale; needs AVX512-VNNI or AMX (on AVX2 oneDNN's int8 is slower than fp32).
//       Opt-in only: auto never picks it (its gate, kInt8Gate, is 5x looser than bf16's). A layer that
//       misses the int8 gate on a probe input at load runs bf16 (where auto would) or fp32 instead:
//       Linear::precision() reports it.
// auto: bf16 where this CPU runs it faster than fp32 (AMX-BF16, or AVX512-BF16 on AMD, whose
//       vdpbf16ps runs at the fp32 FMA rate), fp32 elsewhere (e.g. Intel AVX512-BF16 without AMX
//       executes vdpbf16ps at half rate; AVX2 has no bf16 arithmetic): resolve_precision(). make_layer
//       then keeps bf16 only if the layer passes the bf16 gate (kBf16Gate) on a probe input.
// Everything outside the projections (softmax, masks, layer norms, attention products, sums) stays
// float32 whatever the precision.
#pragma once

#include <cstdint>
#include <string>

#include "tokenmix/core/bf16.h"  // to_bf16 / from_bf16: the rounding of the bf16 backend
#include "tokenmix/core/tensor.h"

namespace tokenmix {

enum class Precision { kFp32, kBf16, kInt8, kAuto };

// How a Linear computes: the oneDNN matmul primitive on weights prepacked at construction (the fast
// path, any precision), or the reference path (OpenBLAS sgemm on the weights as loaded; fp32 only)
// that tests compare against. The environment variable TOKENMIX_GEMM=reference makes kReference the
// default of LinearOptions (read once per process).
enum class GemmBackend { kOnednn, kReference };

// The parity gate of bf16, as a fraction of an output's largest magnitude: max |y_bf16 - y_fp32| <=
// kBf16Gate * max |y_fp32|. bf16 keeps 8 significant bits (2^-9 relative rounding per operand); a
// projection's rounding errors add up to ~1e-3 of its output's scale, and softmax, layer norms and
// second products may amplify that a few times. 1e-2 leaves that margin while a wrong kernel (errors
// of the order of the scale) fails. Checked on every reference case (tokenmix run --precision bf16,
// tests/precision_test.cpp) and, for auto, on the layer's own weights at load (make_layer).
inline constexpr double kBf16Gate = 1e-2;
// int8's gate: 5e-2 of the output's scale. int8 rounds each input row and each weight row to 1/254
// of its own range (bf16: every value to 2^-9 of itself), so its errors run ~4x bf16's, more for
// narrow rows (E = 16: 3.5e-2 on a continual-attention step, the worst reference case) and rows with
// one outlier. Checked like bf16's; make_layer also checks it on the layer's own weights and falls
// back (bf16, then fp32) when they miss it.
inline constexpr double kInt8Gate = 5e-2;
// The gate of a (resolved) precision: kBf16Gate, kInt8Gate, 0 for fp32.
double precision_gate(Precision p);
// max |y - fp32| / max |fp32| (a NaN difference counts as infinite; the plain max difference when
// fp32 is all zeros): the measure the gates bound. y and fp32 hold the same number of elements.
double scaled_error(const Tensor& y, const Tensor& fp32);

// "fp32" | "bf16" | "int8" | "auto". Throws Error "<fn>: precision: expected fp32, bf16, int8 or auto,
// got '<s>'".
Precision parse_precision(const std::string& s, const char* fn = "parse_precision");
const char* precision_name(Precision p);
// auto -> bf16 or fp32 for this CPU (rule above); fp32 / bf16 / int8 unchanged. Throws Error
// "resolve_precision: bf16: this CPU has no AVX512-BF16 or AMX-BF16 (oneDNN ISA: ...)" when bf16 is
// asked for on a CPU without bf16 arithmetic (oneDNN would emulate it slower than fp32), and
// "resolve_precision: int8: this CPU has no AVX512-VNNI or AMX-INT8 ..." likewise for int8.
Precision resolve_precision(Precision p);
// The process default backend: kReference when TOKENMIX_GEMM=reference, else kOnednn. Throws Error
// when TOKENMIX_GEMM holds anything but "onednn" or "reference".
GemmBackend default_gemm_backend();

// How the projections of one layer run. Not an upstream constructor argument: chosen by the caller
// (make_layer / load_layer options, the CLI's --precision, Python's precision=).
struct LinearOptions {
  Precision precision = Precision::kFp32;
  GemmBackend backend = default_gemm_backend();
  // Throws Error "<fn>: ..." for bf16 / int8 on the reference backend (which runs auto as fp32).
  void Validate(const char* fn) const;
};

// The precision a Linear built with these options runs (before make_layer's load-time gate): fp32 on
// the reference backend, else resolve_precision(options.precision) (which throws as it says).
Precision resolve_precision(const LinearOptions& options);

}  // namespace tokenmix
