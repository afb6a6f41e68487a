// The instruction sets tokenmix uses: what the build assumes, and the kernel set chosen at run time
// (tokenmix/core/cpu.h): the CPU's best by default, TOKENMIX_ISA forcing one (and capping oneDNN),
// a bad value refused with a clear error. The kernels themselves are tested against their plain
// references under whichever set runs; CI runs the suite under each (TOKENMIX_ISA=generic).
#include <gtest/gtest.h>

#include "test_util.h"
#include "tokenmix/core/cpu.h"

namespace tokenmix {
namespace {

TEST(Cpu, ThisBuildRunsOnThisCpu) {
  // The suite runs on the machine it was built for: nothing the build assumes may be missing. The
  // default build assumes nothing; a TOKENMIX_NATIVE build on an AVX2 machine names avx2.
  EXPECT_EQ(missing_build_isa(), "");
#if defined(__AVX2__)
  EXPECT_NE(build_isa().find("avx2"), std::string::npos) << build_isa();
#else
  EXPECT_EQ(build_isa().find("avx2"), std::string::npos) << build_isa();
#endif
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

std::string best_set() {
  if (!cpu_has_avx2()) return "generic";
  const bool bf16 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  return bf16 ? "avx512_bf16" : "avx2";
}

TEST(Cpu, KernelSetIsTheCpusBestUnlessForced) {
  // This process: TOKENMIX_ISA as CI set it, else the CPU's best.
  const char* env = std::getenv("TOKENMIX_ISA");
  const std::string want = env && *env ? env : best_set();
  EXPECT_EQ(kernel_isa_name(kernel_isa()), want);
  // Child processes: unset (empty) -> the CPU's best; forced -> that set.
  const test::CliResult best = test::cli("info", "TOKENMIX_ISA=");
  EXPECT_EQ(best.status, 0) << best.out;
  EXPECT_NE(best.out.find("kernels   " + best_set() + " "), std::string::npos) << best.out;
  for (const std::string set : {"generic", "avx2", "avx512_bf16"}) {
    if (set == "avx2" && !cpu_has_avx2()) continue;
    if (set == "avx512_bf16" && best_set() != set) continue;
    const test::CliResult forced = test::cli("info", "TOKENMIX_ISA=" + set);
    EXPECT_EQ(forced.status, 0) << forced.out;
    EXPECT_NE(forced.out.find("kernels   " + set + " "), std::string::npos) << forced.out;
  }
}

TEST(Cpu, ForcedSetCapsOneDnn) {
  // TOKENMIX_ISA=generic caps oneDNN at SSE4.1: bf16 GEMMs are refused, fp32 replays every case.
  const std::string ref = TOKENMIX_REFERENCE_DIR;
  const test::CliResult bf16 = test::cli("run '" + ref + "/espnet_mha' --precision bf16", "TOKENMIX_ISA=generic");
  EXPECT_NE(bf16.status, 0);
  EXPECT_NE(bf16.out.find("resolve_precision: bf16: this CPU has no AVX512-BF16 or AMX-BF16 (oneDNN ISA: "),
            std::string::npos)
      << bf16.out.substr(0, 300);
  const test::CliResult fp32 = test::cli("run '" + ref + "/hypermixing'", "TOKENMIX_ISA=generic");
  EXPECT_EQ(fp32.status, 0) << fp32.out.substr(0, 600);
  // An explicit ONEDNN_MAX_CPU_ISA wins over the cap: bf16 runs exactly where it runs uncapped.
  const std::string bf16_case = "run '" + ref + "/espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors' --precision bf16";
  const test::CliResult uncapped = test::cli(bf16_case, "TOKENMIX_ISA= ONEDNN_MAX_CPU_ISA=");
  const test::CliResult explicit_cap = test::cli(bf16_case, "TOKENMIX_ISA=generic ONEDNN_MAX_CPU_ISA=ALL");
  EXPECT_EQ(explicit_cap.status, uncapped.status) << explicit_cap.out.substr(0, 300);
}

TEST(Cpu, BadKernelSetIsAClearError) {
  const test::CliResult bad = test::cli("info", "TOKENMIX_ISA=avx512");
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.out.find("tokenmix: error: kernel_isa: TOKENMIX_ISA: expected 'generic', 'avx2' or 'avx512_bf16' "
                         "(or unset: the best this CPU has), got 'avx512'"),
            std::string::npos)
      << bad.out;
  if (best_set() != "avx512_bf16") {  // a set this CPU lacks
    const test::CliResult missing = test::cli("info", "TOKENMIX_ISA=avx512_bf16");
    EXPECT_EQ(missing.status, 2);
    EXPECT_NE(missing.out.find("kernel_isa: TOKENMIX_ISA: 'avx512_bf16' needs a CPU with AVX-512 F/BW/VL and "
                               "AVX512-BF16"),
              std::string::npos)
        << missing.out;
  }
}

}  // namespace
}  // namespace tokenmix
