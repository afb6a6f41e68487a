// tokenmix: command-line front end. `tokenmix --help` lists the subcommands.
#include <iostream>
#include <new>

#include "cli/commands.h"
#include "tokenmix/core/cpu.h"
#include "tokenmix/core/error.h"

int main(int argc, char** argv) {
  if (const std::string missing = tokenmix::missing_build_isa(); !missing.empty()) {
    std::cerr << "tokenmix: error: this build uses CPU instructions this CPU lacks (" << missing
              << "); rebuild on this machine or without -DTOKENMIX_NATIVE=ON\n";
    return tokenmix::cli::kBadInputStatus;
  }
  try {
    tokenmix::kernel_isa();  // a bad TOKENMIX_ISA is reported here, before any command runs
  } catch (const std::exception& e) {
    std::cerr << "tokenmix: error: " << e.what() << "\n";
    return tokenmix::cli::kBadInputStatus;
  }
  CLI::App app{"tokenmix: attention and token-mixing layers (ESPnet MHA, continual attention, "
               "HyperMixing, Primer-EZ, Fastformer) in C++"};
  app.require_subcommand(1);
  int status = 0;
  tokenmix::cli::add_run_command(app, &status);
  tokenmix::cli::add_stream_command(app, &status);
  tokenmix::cli::add_bench_command(app, &status);
  tokenmix::cli::add_info_command(app, &status);
  // A failure that reaches here is the command line's or the whole command's (a case's own failure
  // is reported by `run` itself).
  const auto bad_input = [&app] {
    return app.got_subcommand("run") ? tokenmix::cli::kRunUsageStatus : tokenmix::cli::kBadInputStatus;
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : bad_input();
  } catch (const std::bad_alloc&) {
    std::cerr << "tokenmix: error: out of memory\n";
    return bad_input();
  } catch (const std::exception& e) {
    std::cerr << "tokenmix: error: " << e.what() << "\n";
    return bad_input();
  }
  return status;
}
