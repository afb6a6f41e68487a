// `tokenmix info`: what a safetensors file holds (metadata, tensors) and the layer it describes, or
// without a file the CPU extensions this build assumes.
#include <cstdio>

#include "cli/commands.h"
#include "tokenmix/core/cpu.h"
#include "tokenmix/layers/registry.h"

namespace tokenmix::cli {

namespace {

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

int info(const std::string& path, bool list_modules) {
  if (list_modules) {
    for (const auto& m : supported_modules()) {
      std::string options;
      for (const auto& o : m.options) options += (options.empty() ? "" : ", ") + o;
      std::printf("%s (%s)\n  options: %s\n  stream options: %s\n", m.module.c_str(), m.family.c_str(),
                  options.c_str(), m.stream_options.c_str());
    }
    if (path.empty()) return 0;
  }
  if (path.empty()) {  // no file: what this build runs on
    const std::string isa = build_isa();
    std::printf("build ISA %s\n", isa.empty() ? "baseline (no extensions assumed)" : isa.c_str());
    std::printf("kernels   %s (TOKENMIX_ISA=generic|avx2|avx512_bf16 forces a set)\n", kernel_isa_name(kernel_isa()));
    return 0;
  }
  const SafetensorsFile f(path);
  std::printf("file      %s\n", path.c_str());
  for (const auto& [k, v] : f.metadata()) {
    const std::string shown = v.size() > 200 ? v.substr(0, 200) + "..." : v;
    std::printf("metadata  %-10s %s\n", k.c_str(), shown.c_str());
  }
  int64_t bytes = 0;
  for (const auto& name : f.names()) {
    const TensorInfo& in = f.info(name);
    bytes += static_cast<int64_t>(in.end - in.begin);
    std::printf("tensor    %-40s %-5s %s\n", name.c_str(), dtype_name(in.dtype), dims_text(in.dims).c_str());
  }
  std::printf("total     %zu tensors, %lld bytes\n", f.names().size(), static_cast<long long>(bytes));
  if (!f.metadata().count("module")) {
    std::printf("layer     none (no 'module' in __metadata__: not a self-describing checkpoint)\n");
    return 0;
  }
  const auto layer = load_layer(path);
  std::printf("layer     %s, d_model %lld (loads with load_layer)\n", layer->name().c_str(),
              static_cast<long long>(layer->d_model()));
  return 0;
}

}  // namespace

void add_info_command(CLI::App& app, int* status) {
  auto path = std::make_shared<std::string>();
  auto modules = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand(
      "info",
      "Print what a safetensors file holds (metadata, tensors with dtype and shape) and, for a "
      "self-describing checkpoint or a reference case, the layer it builds; without FILE, the CPU "
      "extensions this build assumes and the kernel set it runs. Exit status: 0, or 2 when the file cannot be read or its layer "
      "cannot be built (the reason is printed).");
  cmd->add_option("FILE", *path, "A checkpoint, reference case or saved stream state");
  cmd->add_flag("--modules", *modules, "List the supported upstream modules with their options");
  cmd->callback([path, modules, status] { *status = info(*path, *modules); });
}

}  // namespace tokenmix::cli
