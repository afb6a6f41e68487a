// `tokenmix run`: replay reference cases and report parity.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>

#include "cases/case.h"
#include "cli/commands.h"

namespace tokenmix::cli {

namespace fs = std::filesystem;

namespace {

struct RunOptions {
  std::vector<std::string> paths;
  std::string out;
  double atol = -1, rtol = -1;
  std::string precision = "fp32";
};

// Every .safetensors file under the given paths, with the folder it was found under (for --out).
// Folders are searched recursively for regular files; a path given by name is returned as is (the
// reader refuses anything but a regular file).
std::vector<std::pair<fs::path, fs::path>> collect(const std::vector<std::string>& paths) {
  std::vector<std::pair<fs::path, fs::path>> files;
  for (const auto& p : paths) {
    std::error_code ec;
    const fs::file_status st = fs::status(p, ec);
    check(!ec && fs::exists(st), "tokenmix run: PATH: '", p, "' does not exist");
    if (!fs::is_directory(st)) {
      files.emplace_back(p, fs::path());
      continue;
    }
    std::vector<fs::path> found;
    fs::recursive_directory_iterator it(p, fs::directory_options::skip_permission_denied, ec), end;
    for (; !ec && it != end; it.increment(ec))
      if (it->is_regular_file(ec) && it->path().extension() == ".safetensors") found.push_back(it->path());
    check(!ec, "tokenmix run: PATH: cannot list '", p, "': ", ec.message());
    std::sort(found.begin(), found.end());
    for (const auto& f : found) files.emplace_back(f, p);
  }
  return files;
}

// Whether a and b name the same file (existing) or the same normalised path (not yet existing).
bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  if (fs::equivalent(a, b, ec)) return true;
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec) && !ec;
}

// Writes the case's outputs to dest (creating its folder), refusing to overwrite the case itself.
void write_case_outputs(const cases::CaseResult& r, const SafetensorsFile& f, const fs::path& dest) {
  check(!same_file(dest, f.path()), "tokenmix run: --out: '", dest.string(),
        "' is the case file itself; choose another path");
  if (dest.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(dest.parent_path(), ec);
    check(!ec, "tokenmix run: --out: cannot create the folder '", dest.parent_path().string(), "': ", ec.message());
  }
  cases::write_outputs(r, f, dest.string());
}

int run(const RunOptions& o) {
  const auto files = collect(o.paths);
  check(!files.empty(), "tokenmix run: no .safetensors files under the given PATHs");
  const bool many = files.size() > 1 || !files[0].second.empty();
  struct Row {
    int pass = 0, fail = 0, error = 0;
    double max_abs = 0, max_rel = 0;
  };
  std::map<std::string, Row> summary;
  int failed = 0;  // cases that mismatched or could not be run
  LinearOptions linear;
  linear.precision = parse_precision(o.precision, "tokenmix run: --precision");
  const Precision runs = resolve_precision(linear);
  std::printf("precision %s (%s): each output within its SPEC tolerance", precision_name(runs),
              linear.backend == GemmBackend::kReference ? "reference GEMM" : "oneDNN GEMM");
  if (precision_gate(runs) > 0) std::printf(" + %.0e x its largest |expected|", precision_gate(runs));
  std::printf("\n");
  for (const auto& [file, root] : files) {
    const std::string shown = root.empty() ? file.string() : fs::relative(file, root).string();
    std::string family = "?";
    // Every failure of one case (bad file, bad metadata, out of memory, a failed --out write) is
    // reported on its line and the run goes on with the next case.
    try {
      SafetensorsFile f(file.string());
      family = cases::family_for(cases::parse_case(f).module).family;
      const cases::CaseResult r = cases::run_case(f, o.atol, o.rtol, linear);
      if (!o.out.empty()) write_case_outputs(r, f, many ? fs::path(o.out) / fs::path(shown) : fs::path(o.out));
      double max_abs = 0, max_rel = 0;
      bool pass = true;
      std::string problems;
      for (const auto& c : r.comparisons) {
        max_abs = std::max(max_abs, c.max_abs);
        max_rel = std::max(max_rel, c.max_rel);
        if (!c.pass) {
          pass = false;
          problems += " " + c.name + (c.problem.empty() ? "" : " (" + c.problem + ")");
        }
      }
      auto& row = summary[family];
      if (r.comparisons.empty()) {
        std::printf("%-58s %-12s %10s %10s  DONE (no expected outputs)\n", shown.c_str(), family.c_str(), "-", "-");
        ++row.pass;
      } else {
        std::printf("%-58s %-12s %10.2e %10.2e  %s%s\n", shown.c_str(), family.c_str(), max_abs, max_rel,
                    pass ? "PASS" : "FAIL", problems.c_str());
        (pass ? row.pass : row.fail) += 1;
        row.max_abs = std::max(row.max_abs, max_abs);
        row.max_rel = std::max(row.max_rel, max_rel);
        failed += !pass;
      }
    } catch (const std::exception& e) {
      std::printf("%-58s %-12s %10s %10s  ERROR\n", shown.c_str(), family.c_str(), "-", "-");
      std::fflush(stdout);
      const bool ours = dynamic_cast<const Error*>(&e) != nullptr;
      std::cerr << "tokenmix run: " << shown << ": " << (ours ? "" : "unexpected error: ") << e.what() << "\n";
      ++summary[family].error;
      ++failed;
    }
    std::fflush(stdout);
  }
  std::printf("\n%-12s %6s %6s %6s %12s %12s\n", "family", "pass", "fail", "error", "max_abs_err", "max_rel_err");
  int total_pass = 0, total = 0;
  for (const auto& [name, row] : summary) {
    std::printf("%-12s %6d %6d %6d %12.2e %12.2e\n", name.c_str(), row.pass, row.fail, row.error, row.max_abs,
                row.max_rel);
    total_pass += row.pass;
    total += row.pass + row.fail + row.error;
  }
  std::printf("%d of %d cases pass\n", total_pass, total);
  return std::min(failed, kMaxFailedStatus);
}

}  // namespace

void add_run_command(CLI::App& app, int* status) {
  auto opts = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand(
      "run",
      "Replay reference cases (.safetensors with param.*, in.*, out.* and module/config/call metadata) "
      "through tokenmix and compare with their expected out.* tensors. A case that cannot be run is reported "
      "as ERROR and the run goes on with the next one.\n"
      "Exit status: 0 when every case passes, else the number of cases that failed or could not be run "
      "(capped at 100); 101 on a bad command line (no case found, a missing PATH, an unknown flag).");
  cmd->add_option("PATH", opts->paths, "Case files or folders (searched recursively for *.safetensors); required")
      ->required();
  cmd->add_option("--out", opts->out,
                  "Write every produced out.* tensor: to this file for a single case, or under this folder "
                  "(same relative file names) for several. Each file is written whole or not at all "
                  "(a temporary file renamed into place); a case file is never overwritten. Default: do not write");
  cmd->add_option("--atol", opts->atol,
                  "Absolute tolerance. Default: each family's tolerance from its SPEC (1e-5; HyperMixing "
                  "2e-5; Retroactive streams 2e-5)");
  cmd->add_option("--rtol", opts->rtol, "Relative tolerance. Default: each family's tolerance from its SPEC");
  cmd->add_option("--precision", opts->precision,
                  "Precision of the layers' projections: fp32, bf16 (error: the CPU lacks AVX512-BF16 / AMX), int8 "
                  "(error: the CPU lacks AVX512-VNNI / AMX; a layer missing the int8 gate at load runs bf16 or fp32) or auto (bf16 where it is faster on this CPU and passes "
                  "its gate, else fp32). Reduced-precision outputs are compared with the fp32 expectations within the "
                  "precision's gate: the SPEC tolerance + 1e-2 (bf16) or 5e-2 (int8) x the output's largest "
                  "magnitude. Default: fp32");
  cmd->callback([opts, status] { *status = run(*opts); });
}

}  // namespace tokenmix::cli
