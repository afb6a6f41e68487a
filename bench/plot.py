#!/usr/bin/python3
"""Time against sequence length, tokenmix vs PyTorch vs ONNX Runtime, per layer: docs/bench.png.

    ./build/tokenmix bench --sweep --threads 1 --json ours.json
    /usr/bin/python3 bench/torch_baseline.py --sweep --threads 1 --json torch.json
    .venv/bin/python bench/ort_baseline.py --sweep --threads 1 --json ort.json
    /usr/bin/python3 bench/plot.py ours.json torch.json ort.json [-o docs/bench.png]

Uses the offline B=1 measurements (T = 64 .. 8192, E=512, H=8); one panel per layer, one line per
implementation and thread count, log-log (a grid of at most 3 panels per row).
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STYLE = {"tokenmix": ("o", "-"), "pytorch": ("s", "--"), "onnxruntime": ("^", "-.")}  # impl -> marker, line


def main():
    p = argparse.ArgumentParser()
    p.add_argument("json", nargs="+", help="tokenmix bench / torch_baseline.py --json files")
    p.add_argument("-o", "--out", default=os.path.join(ROOT, "docs", "bench.png"))
    a = p.parse_args()
    rows = [r for f in a.json for r in json.load(open(f)) if r["mode"] == "offline" and r["dims"]["B"] == 1]
    layers = sorted({r["layer"] for r in rows})
    if not layers:
        raise SystemExit("plot.py: no offline B=1 measurements (run with --sweep)")
    # One panel per layer, at most 3 per row; unused panels of the last row are hidden.
    ncols = min(3, len(layers))
    nrows = (len(layers) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, layers):
        series = {}
        for r in rows:
            if r["layer"] == layer:
                series.setdefault((r.get("impl", "?"), r["threads"]), []).append((r["dims"]["T"], r["median_ms"]))
        for (impl, threads), pts in sorted(series.items()):
            pts.sort()
            marker, line = STYLE.get(impl, ("x", ":"))
            ax.plot([t for t, _ in pts], [ms for _, ms in pts], marker=marker, linestyle=line,
                    label=f"{impl}, {threads} thread(s)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (tokens), B=1, E=512, H=8")
        ax.set_ylabel("forward time, median (ms)")
        ax.set_title(layer)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
