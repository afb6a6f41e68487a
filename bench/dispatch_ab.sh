#!/usr/bin/env bash
# bench/dispatch_ab.sh [BUILD] [ROUNDS]: the default build (baseline x86-64, kernels picked at run time)
# against a -march=native build of the same source, and against itself with TOKENMIX_ISA=generic (the
# plain loops), 1 thread, every layer of `tokenmix bench`; the three variants alternate for ROUNDS
# rounds (default 2) and each row keeps its best median. Prints the table of BENCHMARKS.md "Run-time
# dispatch". BUILD (default build) must hold a Release build of the CLI; the native one is built into
# BUILD-native.
set -euo pipefail
build=${1:-build}
rounds=${2:-2}
cmake -S . -B "$build-native" -DCMAKE_BUILD_TYPE=Release -DTOKENMIX_NATIVE=ON -DTOKENMIX_BUILD_TESTS=OFF \
  -DTOKENMIX_BUILD_BENCHMARKS=OFF > /dev/null
cmake --build "$build-native" -j "$(nproc)" --target tokenmix_cli > /dev/null
out=$(mktemp -d)
for r in $(seq "$rounds"); do
  "$build-native/tokenmix" bench --threads 1 --json "$out/native_$r.json" > /dev/null
  "$build/tokenmix" bench --threads 1 --json "$out/dispatch_$r.json" > /dev/null
  TOKENMIX_ISA=generic "$build/tokenmix" bench --threads 1 --json "$out/generic_$r.json" > /dev/null
done
python3 - "$out" "$rounds" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
best = {}
for variant in ("native", "dispatch", "generic"):
    for r in range(1, rounds + 1):
        for row in json.load(open(f"{out}/{variant}_{r}.json")):
            key = (row["layer"], row["mode"], row["shape"].split("_E")[0])
            ms = best.setdefault(key, {})
            ms[variant] = min(ms.get(variant, float("inf")), row["median_ms"])
print("| layer | mode, shape | -march=native ms | default (dispatch) ms | TOKENMIX_ISA=generic ms | native / default | generic / default |")
print("|---|---|---|---|---|---|---|")
for (layer, mode, shape), ms in best.items():
    print(f"| {layer} | {mode} {shape} | {ms['native']:.3g} | {ms['dispatch']:.3g} | {ms['generic']:.3g} | "
          f"{ms['native'] / ms['dispatch']:.2f} | {ms['generic'] / ms['dispatch']:.2f} |")
PY
rm -rf "$out"
