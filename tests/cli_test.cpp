// The `tokenmix` executable on hostile paths and files: every per-case failure is reported once and
// the run goes on; the exit status counts the failed cases; --out never leaves a partial file nor
// overwrites a case; a FIFO or a folder given as a case is refused without blocking; `stream`
// validates its input and streams every sequence-layer reference case with its default options.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cases/case.h"
#include "test_util.h"

namespace tokenmix {
namespace {

namespace fs = std::filesystem;

const std::string kRef = TOKENMIX_REFERENCE_DIR;
const std::string kRegressions = kRef + "/../regressions";
const std::string kGood = kRef + "/espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors";

using test::cli;
using Result = test::CliResult;

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + 1)) ++n;
  return n;
}

// A fresh folder under the temp directory.
fs::path scratch(const std::string& name) {
  const fs::path d = test::temp_path(name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(Cli, FolderRunGoesOnAndCountsFailures) {
  const fs::path d = scratch("cli_folder");
  fs::copy_file(kGood, d / "a_good.safetensors");
  fs::copy_file(kRegressions + "/run-json-out_of_range-no-args.safetensors", d / "b_bad.safetensors");
  fs::copy_file(kRegressions + "/run-alloc-sequence_len-2p62.safetensors", d / "c_bad.safetensors");
  fs::copy_file(kGood, d / "d_good.safetensors");
  const Result r = cli("run '" + d.string() + "'");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_EQ(count(r.out, "PASS"), 2u) << r.out;
  EXPECT_EQ(count(r.out, " ERROR"), 2u) << r.out;
  EXPECT_NE(r.out.find("case call: expected an object with 'args'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 of 4 cases pass"), std::string::npos) << r.out;
}

TEST(Cli, EveryReproducerIsAnErrorNotACrash) {
  for (const auto& e : fs::directory_iterator(kRegressions)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("run-", 0) != 0) continue;
    const Result r = cli("run '" + e.path().string() + "'");
    EXPECT_EQ(r.status, 1) << name << "\n" << r.out;
    EXPECT_EQ(count(r.out, " ERROR"), 1u) << name << "\n" << r.out;
  }
}

TEST(Cli, UsageErrorsHaveTheirOwnStatus) {
  EXPECT_EQ(cli("run").status, 101);
  EXPECT_EQ(cli("run /nonexistent/case.safetensors").status, 101);
  EXPECT_EQ(cli("run --no-such-flag " + kGood).status, 101);
  EXPECT_EQ(cli("stream").status, 2);
}

TEST(Cli, FifoAndFolderAsCaseAreRefused) {
  const fs::path d = scratch("cli_fifo");
  const fs::path fifo = d / "p.safetensors";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  Result r = cli("run '" + fifo.string() + "'");  // would block in open() for a writer
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("expected a regular file, got a special file"), std::string::npos) << r.out;
  r = cli("stream '" + d.string() + "'");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("expected a regular file, got a directory"), std::string::npos) << r.out;
}

TEST(Cli, OutNeverOverwritesTheCase) {
  const fs::path d = scratch("cli_out_same");
  const fs::path c = d / "case.safetensors";
  fs::copy_file(kGood, c);
  const auto before = fs::file_size(c);
  for (const std::string& out : {c.string(), (d / "x" / ".." / "case.safetensors").string()}) {
    const Result r = cli("run '" + c.string() + "' --out '" + out + "'");
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.out.find("is the case file itself"), std::string::npos) << r.out;
    EXPECT_EQ(count(r.out, "PASS"), 0u) << r.out;
  }
  EXPECT_EQ(fs::file_size(c), before);
  // A folder run whose --out is the input folder would overwrite every case.
  const Result r = cli("run '" + d.string() + "' --out '" + d.string() + "'");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(fs::file_size(c), before);
}

TEST(Cli, FailedOutWriteIsOneErrorAndLeavesNoFile) {
  const fs::path d = scratch("cli_out_fail");
  std::ofstream(d / "blocker") << "a file where a folder is needed";
  const Result r = cli("run " + kGood + " --out '" + (d / "blocker" / "o.safetensors").string() + "'");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(count(r.out, " ERROR"), 1u) << r.out;
  EXPECT_EQ(count(r.out, "PASS"), 0u) << r.out;
  EXPECT_EQ(std::distance(fs::directory_iterator(d), fs::directory_iterator()), 1) << "a temporary file was left";
}

// A full filesystem (a 16 KiB tmpfs, when this process may mount one): ENOSPC ends in one ERROR and
// no file, partial or temporary.
TEST(Cli, FullDiskLeavesNoPartialFile) {
  const fs::path d = scratch("cli_enospc");
  if (mount("tmpfs", d.c_str(), "tmpfs", 0, "size=16k") != 0) GTEST_SKIP() << "cannot mount a tmpfs here";
  const Result r = cli("run " + kRegressions + "/cli-partial-out-enospc.safetensors --out '" +
                       (d / "o.safetensors").string() + "'");
  const auto left = std::distance(fs::directory_iterator(d), fs::directory_iterator());
  umount(d.c_str());
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(count(r.out, " ERROR"), 1u) << r.out;
  EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << r.out;
  EXPECT_EQ(left, 0) << r.out;
}

TEST(Cli, OutWritesReadableFiles) {
  const fs::path d = scratch("cli_out_ok");
  const Result r = cli("run " + kGood + " --out '" + (d / "o.safetensors").string() + "'");
  EXPECT_EQ(r.status, 0) << r.out;
  const SafetensorsFile f((d / "o.safetensors").string());
  EXPECT_TRUE(f.contains("out.y")) << r.out;
}

TEST(Cli, StreamValidatesItsInput) {
  Result r = cli("stream " + kRegressions + "/cli-stream-T0.safetensors");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("expected at least 1 batch row and 1 token"), std::string::npos) << r.out;
  r = cli("stream " + kRef + "/hypermixing/hypermixing_e16_h1_b1_t7.safetensors --length 0");
  EXPECT_EQ(r.status, 0) << r.out;  // the case has its own (B, T, E) input; --length is not used
  const std::string no_input = kRef + "/continual/continual_so_stream_e8_h2_l4_b2_qkv.safetensors";  // random input
  r = cli("stream " + no_input + " --length 0");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("--length: expected 1 <= --length <= 1048576, got 0"), std::string::npos) << r.out;
  r = cli("stream " + no_input + " --length 9000000000000");
  EXPECT_EQ(r.status, 2) << r.out;
  r = cli("stream " + no_input + " --length 3");  // fewer tokens than sequence_len: no output, still a match
  EXPECT_EQ(r.status, 0) << r.out;
}

TEST(Cli, InfoDescribesFileAndLayer) {
  Result r = cli("info " + kGood);
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("tensor    param.linear_q.weight                    F32   (32, 32)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layer     espnet_mha, d_model 32"), std::string::npos) << r.out;
  r = cli("info --modules");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("speechbrain.nnet.hypermixing.HyperMixing (hypermixing)"), std::string::npos) << r.out;
  r = cli("info " + kRegressions + "/run-alloc-sequence_len-2p62.safetensors");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("sequence_len: expected 1 <= sequence_len <= 1048576"), std::string::npos) << r.out;
}

// Every reference case of a sequence layer streams with the default options and matches.
TEST(Cli, StreamsEveryReferenceCase) {
  int streamed = 0;
  for (const auto& fam : cases::families())
    for (const auto& path : test::reference_cases(fam.family)) {
      const SafetensorsFile f(path);
      const auto layer = fam.build_layer ? fam.build_layer(cases::parse_case(f)) : nullptr;
      if (!layer) continue;
      const Result r = cli("stream " + path);
      EXPECT_EQ(r.status, 0) << path << "\n" << r.out;
      ++streamed;
    }
  EXPECT_GT(streamed, 50);
}

}  // namespace
}  // namespace tokenmix
