#!/usr/bin/env bash
# Seed corpora for the fuzz harnesses, generated from the project's own files:
#   safetensors, state_dict, run_case   the reference cases and the regression files;
#   stream_restore                      a real saved state of each kind of stream (written by the
#                                       harness itself: TOKENMIX_FUZZ_WRITE_SEEDS) and the
#                                       regression states.
# Usage: fuzz/make_corpus.sh BUILD_DIR  (writes BUILD_DIR/corpus/<harness>/)
set -euo pipefail
cd "$(dirname "$0")/.."
build=$1
out=$build/corpus
mkdir -p "$out"/{safetensors,state_dict,stream_restore,run_case}
for h in safetensors state_dict run_case; do
  find tests/data/reference tests/data/regressions -name '*.safetensors' -exec cp -n {} "$out/$h/" \;
done
cp -n tests/data/regressions/restore-*.safetensors "$out/stream_restore/"
TOKENMIX_FUZZ_WRITE_SEEDS="$out/stream_restore" "$build/fuzz/fuzz_stream_restore" -runs=0 >/dev/null 2>&1
echo "seed corpora in $out: $(ls "$out/safetensors" | wc -l) case files, $(ls "$out/stream_restore" | wc -l) stream states"
