// tools/cli/commands.h: the `tokenmix` subcommands. Each registers its options on the CLI11 app
// and returns the exit status through *status when it ran.
#pragma once

#include <CLI/CLI.hpp>

namespace tokenmix::cli {

// `tokenmix run PATH... [--out FILE_OR_DIR] [--atol X] [--rtol X]`
void add_run_command(CLI::App& app, int* status);
// `tokenmix stream CASE --chunk N [--window L] [--position P] [--left-context N]`
void add_stream_command(CLI::App& app, int* status);
// `tokenmix bench [--threads N...] [--json FILE] [--filter REGEX] [--repeats N] [--steps N] [--sweep]`
void add_bench_command(CLI::App& app, int* status);

}  // namespace tokenmix::cli
