"""Markdown table of one `tokenmix bench --precision ... --gemm onednn,reference --json FILE` run:
per layer, mode, shape and thread count, the median time of every variant, the speed-ups of bf16 and
int8 over fp32 and of oneDNN fp32 over the OpenBLAS reference, and each variant's error against the
fp32 output (max |y - y_fp32| / max |y_fp32|).

    python3 bench/precision_table.py docs/bench-run/precision.json
"""
import json
import sys


def main(path):
    rows = json.load(open(path))
    table = {}
    for r in rows:
        key = (r["threads"], r["layer"], r["mode"], r["shape"])
        table.setdefault(key, {})[r["requested"]] = r
    print("| layer | mode, shape | thr | fp32 ms | bf16 ms | int8 ms | OpenBLAS fp32 ms | bf16 / fp32 | int8 / fp32 "
          "| oneDNN / OpenBLAS fp32 | bf16 err | int8 err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (threads, layer, mode, shape), v in sorted(table.items()):
        ms = {k: r["median_ms"] for k, r in v.items()}
        def cell(k, fmt="{:.3g}"):
            return fmt.format(ms[k]) if k in ms else "-"
        def speedup(a, b):
            return f"{ms[b] / ms[a]:.2f}x" if a in ms and b in ms else "-"
        def err(k):
            return f"{v[k]['max_rel_err_vs_fp32']:.1e}" if k in v else "-"
        print(f"| {layer} | {mode} {shape.split('_E')[0]} | {threads} | {cell('fp32')} | {cell('bf16')} | "
              f"{cell('int8')} | {cell('fp32/reference')} | {speedup('bf16', 'fp32')} | {speedup('int8', 'fp32')} | "
              f"{speedup('fp32', 'fp32/reference')} | {err('bf16')} | {err('int8')} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/bench-run/precision.json")
