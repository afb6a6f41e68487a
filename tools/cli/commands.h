// tools/cli/commands.h: the `tokenmix` subcommands. Each registers its options on the CLI11 app
// and returns the exit status through *status when it ran.
#pragma once

#include <CLI/CLI.hpp>

namespace tokenmix::cli {

// Exit statuses. `tokenmix run`: 0 when every case passes, else the number of cases that failed or
// could not be run, capped at kMaxFailedStatus; kRunUsageStatus on a bad command line. The other
// subcommands: 0 success, 1 a mismatch (stream), kBadInputStatus on bad input or a bad command line.
inline constexpr int kMaxFailedStatus = 100;
inline constexpr int kRunUsageStatus = 101;
inline constexpr int kBadInputStatus = 2;

// `tokenmix run PATH... [--out FILE_OR_DIR] [--atol X] [--rtol X]`
void add_run_command(CLI::App& app, int* status);
// `tokenmix stream CASE --chunk N [--window L] [--position P] [--left-context N]`
void add_stream_command(CLI::App& app, int* status);
// `tokenmix info [FILE] [--modules]`
void add_info_command(CLI::App& app, int* status);
// `tokenmix bench [--threads N...] [--json FILE] [--filter REGEX] [--repeats N] [--steps N] [--sweep]`
void add_bench_command(CLI::App& app, int* status);

}  // namespace tokenmix::cli
