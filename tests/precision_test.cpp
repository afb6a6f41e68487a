// Reduced precision: every reference case within the bf16 parity gate (kBf16Gate of each output's
// scale), streams equal to their offline definition within the same gate, auto's rule and load-time
// gate, and the fallbacks on a CPU without bf16 (oneDNN's ISA capped with ONEDNN_MAX_CPU_ISA in a
// child process, so every machine exercises them).
#include <map>

#include "cases/case.h"
#include "stream_checks.h"
#include "test_util.h"
#include "tokenmix/kernels/precision.h"
#include "tokenmix/layers/registry.h"

namespace tokenmix {
namespace {

bool cpu_has_bf16() {
  try {
    resolve_precision(Precision::kBf16);
    return true;
  } catch (const Error&) {
    return false;
  }
}

const LinearOptions kBf16{Precision::kBf16, GemmBackend::kOnednn};

TEST(Precision, EveryReferenceCaseWithinTheBf16Gate) {
  if (!cpu_has_bf16()) GTEST_SKIP() << "no bf16 arithmetic here (CappedIsa tests cover the refusal)";
  std::map<std::string, double> worst;  // family -> largest error / output scale
  for (const auto& fam : cases::families())
    for (const auto& path : test::reference_cases(fam.family)) {
      SafetensorsFile f(path);
      const cases::CaseResult r = cases::run_case(f, -1, -1, kBf16);
      for (const auto& c : r.comparisons) {
        EXPECT_TRUE(c.pass) << path << ": " << c.name << " max_abs " << c.max_abs << " " << c.problem;
        if (!f.contains(c.name)) continue;
        double scale = 0;
        const Tensor want = f.tensor_flat(c.name);
        for (float v : want) scale = std::max(scale, static_cast<double>(std::fabs(v)));
        if (scale > 0) worst[fam.family] = std::max(worst[fam.family], c.max_abs / scale);
      }
    }
  for (const auto& [family, err] : worst) {
    std::printf("[ bf16 ] %-12s worst error / output scale %.2e (gate %.0e)\n", family.c_str(), err, kBf16Gate);
    // Rounded (not silently fp32) but within the gate.
    EXPECT_GT(err, 1e-5) << family;
  }
}

TEST(Precision, StreamsEqualOfflineInBf16) {
  if (!cpu_has_bf16()) GTEST_SKIP() << "no bf16 arithmetic here";
  std::map<std::string, bool> seen;
  for (const auto& fam : cases::families())
    for (const auto& path : test::reference_cases(fam.family)) {
      SafetensorsFile f(path);
      cases::Case c = cases::parse_case(f);
      if (!fam.build_layer || seen[c.module + c.config.dump()]) continue;
      seen[c.module + c.config.dump()] = true;
      c.linear = kBf16;
      const auto layer = fam.build_layer(c);
      if (!layer) continue;
      ASSERT_EQ(layer->projection().precision(), Precision::kBf16) << path;
      const Tensor x = test::random_tensor(Shape{2, 11, layer->d_model()}, 5);
      StreamOptions opts;
      opts.left_context = 3;
      opts.window = 4;
      opts = test::accepted_options(*layer, opts);
      const Tensor want = layer->stream_reference(x, opts);
      auto s = layer->open_stream(2, opts);
      const Tensor got = test::run_stream(*s, x, {1, 3, 2, 5});
      double scale = 0;
      for (float v : want) scale = std::max(scale, static_cast<double>(std::fabs(v)));
      EXPECT_LE(test::max_abs_diff(got, want), kBf16Gate * scale) << path;
    }
}

TEST(Precision, AutoFollowsTheCpuRuleAndTheLoadTimeGate) {
  const Precision chosen = resolve_precision(Precision::kAuto);
  EXPECT_NE(chosen, Precision::kAuto);
  const std::string kCase = std::string(TOKENMIX_REFERENCE_DIR) + "/espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors";
  const auto layer = load_layer(kCase, {Precision::kAuto, GemmBackend::kOnednn});
  EXPECT_EQ(layer->projection().precision(), chosen);  // these weights pass the gate
  // The reference backend runs fp32 whatever is asked for auto.
  EXPECT_EQ(load_layer(kCase, {Precision::kAuto, GemmBackend::kReference})->projection().precision(), Precision::kFp32);
  if (chosen != Precision::kBf16) return;
  // Weights that make attention very peaked (logits of hundreds): bf16 misses the gate, auto keeps fp32.
  StateDict sd;
  for (const char* p : {"linear_q.", "linear_k.", "linear_v.", "linear_out."}) {
    sd.set(std::string(p) + "weight", test::random_tensor(Shape{32, 32}, 11, 2.f));
    sd.set(std::string(p) + "bias", test::random_tensor(Shape{32}, 12, 0.1f));
  }
  const std::string module = "espnet2.asr.state_spaces.attention.MultiHeadedAttention";
  const std::string config = R"({"n_feat": 32, "n_head": 4})";
  EXPECT_EQ(make_layer(module, config, sd, kBf16)->projection().precision(), Precision::kBf16);
  EXPECT_EQ(make_layer(module, config, sd, {Precision::kAuto, GemmBackend::kOnednn})->projection().precision(),
            Precision::kFp32);
}

// A CPU without bf16 arithmetic (oneDNN capped to AVX2 or AVX-512 without BF16): auto runs fp32 and
// passes; an explicit bf16 is a clear error, not a silent fallback.
TEST(Precision, CappedIsaFallsBackToFp32OrRefuses) {
  const std::string ref = TOKENMIX_REFERENCE_DIR;
  for (const char* isa : {"AVX2", "AVX512_CORE"}) {
    const std::string env = std::string("ONEDNN_MAX_CPU_ISA=") + isa;
    const test::CliResult a = test::cli("run '" + ref + "' --precision auto", env);
    EXPECT_EQ(a.status, 0) << isa << "\n" << a.out;
    EXPECT_NE(a.out.find("precision fp32 (oneDNN GEMM)"), std::string::npos) << a.out.substr(0, 300);
    const test::CliResult b = test::cli("run '" + ref + "/espnet_mha' --precision bf16", env);
    EXPECT_NE(b.status, 0) << isa;
    EXPECT_NE(b.out.find("resolve_precision: bf16: this CPU has no AVX512-BF16 or AMX-BF16"), std::string::npos)
        << b.out.substr(0, 300);
  }
}

}  // namespace
}  // namespace tokenmix
