// `tokenmix run`: replay reference cases and report parity.
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
};

// Every .safetensors file under the given paths, with the folder it was found under (for --out).
std::vector<std::pair<fs::path, fs::path>> collect(const std::vector<std::string>& paths) {
  std::vector<std::pair<fs::path, fs::path>> files;
  for (const auto& p : paths) {
    check(fs::exists(p), "tokenmix run: PATH: '", p, "' does not exist");
    if (fs::is_directory(p)) {
      std::vector<fs::path> found;
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file() && e.path().extension() == ".safetensors") found.push_back(e.path());
      std::sort(found.begin(), found.end());
      for (const auto& f : found) files.emplace_back(f, p);
    } else {
      files.emplace_back(p, fs::path());
    }
  }
  return files;
}

int run(const RunOptions& o) {
  const auto files = collect(o.paths);
  check(!files.empty(), "tokenmix run: no .safetensors files under the given PATHs");
  const bool many = files.size() > 1 || !files[0].second.empty();
  struct Row {
    std::string family;
    int pass = 0, fail = 0, error = 0;
    double max_abs = 0, max_rel = 0;
  };
  std::map<std::string, Row> summary;
  int bad_input = 0, mismatches = 0;
  for (const auto& [file, root] : files) {
    const std::string shown = root.empty() ? file.string() : fs::relative(file, root).string();
    std::string family = "?";
    try {
      SafetensorsFile f(file.string());
      family = cases::family_for(cases::parse_case(f).module).family;
      cases::CaseResult r = cases::run_case(f, o.atol, o.rtol);
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
      row.family = family;
      if (r.comparisons.empty()) {
        std::printf("%-58s %-12s %10s %10s  DONE (no expected outputs)\n", shown.c_str(), family.c_str(), "-", "-");
        ++row.pass;
      } else {
        std::printf("%-58s %-12s %10.2e %10.2e  %s%s\n", shown.c_str(), family.c_str(), max_abs, max_rel,
                    pass ? "PASS" : "FAIL", problems.c_str());
        (pass ? row.pass : row.fail) += 1;
        row.max_abs = std::max(row.max_abs, max_abs);
        row.max_rel = std::max(row.max_rel, max_rel);
        mismatches += !pass;
      }
      if (!o.out.empty()) {
        fs::path dest = o.out;
        if (many) {
          dest = fs::path(o.out) / fs::path(shown);
          fs::create_directories(dest.parent_path());
        }
        cases::write_outputs(r, f, dest.string());
      }
    } catch (const Error& e) {
      std::printf("%-58s %-12s %10s %10s  ERROR\n", shown.c_str(), family.c_str(), "-", "-");
      std::fflush(stdout);
      std::cerr << "tokenmix run: " << e.what() << "\n";
      ++summary[family].error;
      summary[family].family = family;
      ++bad_input;
    }
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
  if (bad_input) return 2;
  return mismatches ? 1 : 0;
}

}  // namespace

void add_run_command(CLI::App& app, int* status) {
  auto opts = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand(
      "run",
      "Replay reference cases (.safetensors with param.*, in.*, out.* and module/config/call metadata) "
      "through tokenmix and compare with their expected out.* tensors.\n"
      "Exit status: 0 all pass, 1 a mismatch, 2 bad input.");
  cmd->add_option("PATH", opts->paths, "Case files or folders (searched recursively for *.safetensors); required")
      ->required();
  cmd->add_option("--out", opts->out,
                  "Write every produced out.* tensor: to this file for a single case, or under this folder "
                  "(same relative file names) for several. Default: do not write");
  cmd->add_option("--atol", opts->atol,
                  "Absolute tolerance. Default: each family's tolerance from its SPEC (1e-5; HyperMixing "
                  "2e-5; Retroactive streams 2e-5)");
  cmd->add_option("--rtol", opts->rtol, "Relative tolerance. Default: each family's tolerance from its SPEC");
  cmd->callback([opts, status] { *status = run(*opts); });
}

}  // namespace tokenmix::cli
