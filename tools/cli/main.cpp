// tokenmix: command-line front end. `tokenmix --help` lists the subcommands.
#include <iostream>

#include "cli/commands.h"
#include "tokenmix/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"tokenmix: attention and token-mixing layers (ESPnet MHA, continual attention, "
               "HyperMixing, Primer-EZ, Fastformer) in C++"};
  app.require_subcommand(1);
  int status = 0;
  tokenmix::cli::add_run_command(app, &status);
  tokenmix::cli::add_stream_command(app, &status);
  tokenmix::cli::add_bench_command(app, &status);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  } catch (const tokenmix::Error& e) {
    std::cerr << "tokenmix: error: " << e.what() << "\n";
    return 2;
  }
  return status;
}
