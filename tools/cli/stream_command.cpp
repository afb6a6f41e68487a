// `tokenmix stream`: stream a reference case's input through its layer chunk by chunk and report the
// largest difference to the offline definition, per-chunk latency and heap allocations after warm-up.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "alloc/alloc_counter.h"
#include "cases/case.h"
#include "cli/commands.h"

namespace tokenmix::cli {

namespace {

struct StreamCliOptions {
  std::string path;
  // window 0: the layer's own (continual: sequence_len), else min(16, T) (HyperMixing: <= max_length).
  int64_t chunk = 1, window = 0, position = -1, left_context = 0, length = 256, batch = 1;
  std::string precision = "fp32";
};

constexpr int64_t kDefaultWindow = 16;

// The window the stream runs with: --window when given, else min(16, T, the layer's largest) for a
// windowed layer (0 for the others).
int64_t stream_window(const Layer& layer, int64_t T, const StreamCliOptions& o) {
  const StreamOptionSpec spec = layer.stream_options_accepted();
  if (o.window != 0 || !spec.window) return o.window;
  return std::min({kDefaultWindow, T, spec.max_window});
}

// The case's (B, T, E) input when it has one in that layout, else a seeded random (batch, length, E).
Tensor stream_input(const SafetensorsFile& f, int64_t E, const StreamCliOptions& o) {
  for (const char* name : {"in.x", "in.query", "in.xs_pad"})
    if (f.contains(name) && f.info(name).dims.size() == 3 && f.info(name).dims[2] == E) return f.tensor(name);
  const char* fn = "tokenmix stream";
  check_range(o.length, 1, limits::kMaxTokens, fn, "--length");
  check_range(o.batch, 1, 1024, fn, "--batch");
  Tensor x{Shape{o.batch, o.length, E}};
  uint32_t s = 12345;
  for (auto& v : x) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<float>(static_cast<int32_t>(s >> 8) % 2000) / 1000.f;
  }
  return x;
}

int run_stream(const StreamCliOptions& o) {
  SafetensorsFile f(o.path);
  cases::Case c = cases::parse_case(f);
  c.linear.precision = parse_precision(o.precision, "tokenmix stream: --precision");
  const cases::CaseFamily& fam = cases::family_for(c.module);
  check(static_cast<bool>(fam.build_layer), "tokenmix stream: ", c.module, " is not a sequence layer");
  std::unique_ptr<Layer> layer = fam.build_layer(c);
  check(layer != nullptr, "tokenmix stream: ", c.module, " has no streaming form");
  check(o.chunk >= 1, "tokenmix stream: --chunk: expected >= 1, got ", o.chunk);
  const Tensor x = stream_input(f, layer->d_model(), o);
  const int64_t B = x.dim(0), T = x.dim(1), E = x.dim(2);
  check(B >= 1 && T >= 1, "tokenmix stream: ", o.path, ": input: expected at least 1 batch row and 1 token, got shape ",
        x.shape());
  StreamOptions opts;
  opts.window = stream_window(*layer, T, o);
  opts.position = o.position;
  opts.left_context = o.left_context;
  const Tensor want = layer->stream_reference(x, opts);
  auto stream = layer->open_stream(B, opts);

  std::vector<Tensor> chunks;
  for (int64_t t = 0; t < T; t += o.chunk) {
    const int64_t C = std::min(o.chunk, T - t);
    Tensor ch{Shape{B, C, E}};
    for (int64_t b = 0; b < B; ++b) std::copy(&x.at(b, t, 0), &x.at(b, t, 0) + C * E, &ch.at(b, 0, 0));
    chunks.push_back(ch);
  }
  // Outputs (B, C_out, E) are compared row by row in time order.
  std::vector<double> ms;
  std::vector<std::vector<float>> rows(B);
  int64_t allocations = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t a0 = alloc::allocation_count();
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor y = stream->push(chunks[i]);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= 1 && chunks[i].dim(1) == o.chunk) allocations += alloc::allocation_count() - a0;
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    for (int64_t b = 0; b < B; ++b)
      rows[b].insert(rows[b].end(), y.data() + b * y.dim(1) * E, y.data() + (b + 1) * y.dim(1) * E);
  }
  const int64_t produced = static_cast<int64_t>(rows[0].size()) / E;
  check(produced == want.dim(1), "tokenmix stream: the stream produced ", produced, " outputs, the offline definition ",
        want.dim(1));
  double max_diff = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < produced * E; ++i)
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(rows[b][i] - want.data()[b * produced * E + i])));
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2], p99 = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
  std::printf("layer            %s (%s)\n", layer->name().c_str(), c.module.c_str());
  std::printf("projections      %s, %s\n", precision_name(layer->projection().precision()),
              layer->projection().impl().c_str());
  std::printf("input            (B=%lld, T=%lld, E=%lld), chunk %lld, window %lld, position %lld, left_context %lld\n",
              static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(E),
              static_cast<long long>(o.chunk), static_cast<long long>(opts.window), static_cast<long long>(o.position),
              static_cast<long long>(o.left_context));
  std::printf("outputs          %lld per row\n", static_cast<long long>(produced));
  std::printf("max |stream - offline|  %.3g\n", max_diff);
  std::printf("chunk latency    median %.4f ms, p99 %.4f ms over %zu chunks\n", median, p99, ms.size());
  std::printf("heap allocations %lld after warm-up (pushes 2..n of size %lld)\n", static_cast<long long>(allocations),
              static_cast<long long>(o.chunk));
  return max_diff <= 1e-4 ? 0 : 1;
}

}  // namespace

void add_stream_command(CLI::App& app, int* status) {
  auto o = std::make_shared<StreamCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "stream",
      "Stream a reference case's input through its layer in chunks; print the largest difference to the "
      "offline definition (Layer::stream_reference), per-chunk latency (median, p99) and heap allocations "
      "after warm-up. Exit status: 0 when the difference is <= 1e-4, 1 otherwise, 2 on bad input.");
  cmd->add_option("CASE", o->path, "Reference case (.safetensors) whose layer and weights are used")->required();
  cmd->add_option("--chunk", o->chunk, "Tokens per push")->capture_default_str();
  cmd->add_option("--precision", o->precision,
                  "Precision of the projections: fp32, bf16, int8 or auto (the stream is compared with the offline "
                  "definition run in the same precision)")
      ->capture_default_str();
  cmd->add_option("--window", o->window,
                  "Window length L for Fastformer and HyperMixing (0: min(16, T), and <= max_length for HyperMixing; "
                  "continual attention streams over its sequence_len and takes 0 or that value)")
      ->capture_default_str();
  cmd->add_option("--position", o->position, "Window position emitted (-1 = newest token)")->capture_default_str();
  cmd->add_option("--left-context", o->left_context, "KV-cache limit for the attention families (0 = unlimited)")
      ->capture_default_str();
  cmd->add_option("--length", o->length, "Tokens of random input when the case has no (B, T, E) input")
      ->capture_default_str();
  cmd->add_option("--batch", o->batch, "Batch rows of random input when the case has no (B, T, E) input")
      ->capture_default_str();
  cmd->callback([o, status] { *status = run_stream(*o); });
}

}  // namespace tokenmix::cli
