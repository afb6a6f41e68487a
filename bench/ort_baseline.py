#!/usr/bin/python3
"""ONNX Runtime baselines for `tokenmix bench` (same shapes, thread counts and JSON schema).

    .venv/bin/python bench/ort_baseline.py --threads 1 2 [--sweep] --json ort.json

Each upstream module (bench/upstream_modules.py; random weights) is exported with torch.onnx.export
at the measurement's fixed shape (in a process of its own, so the export's memory peak does not mask
ORT's) and run on ONNX Runtime's CPU provider (`intra_op_num_threads` = the thread count,
sequential, no spin-waiting), in a fresh child process per measurement (with OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS set, OMP_WAIT_POLICY=PASSIVE), so `peak_mib` (growth of ru_maxrss over the
first run, after the session is made) is that measurement's alone.

Modes: offline = one run on x (B, T, E). stream = what an ORT user has for a new token: an exported
forward has no KV cache or running state, so each token re-runs the forward over the window of the
last ctx + 1 tokens (B=1) and keeps the newest row. continual_so is not measured (upstream's module
has no exportable offline forward of its own), and a module whose export or session fails is
reported on stderr and left out. FLOP counts and the same-process BLAS reference (torch linear) are
torch_baseline.py's, so GFLOP/s and peak% compare like for like.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch_baseline as tb  # noqa: E402  (shapes, FLOP counts, statistics: one definition)


def build(args):
    """(module, call, x) of the measurement, or None when the layer has no upstream module here."""
    import torch

    from upstream_modules import modules

    torch.manual_seed(0)
    rows = args.T if args.mode == "offline" else args.T + 1  # stream: the forward over the whole window
    found = [(m, c) for n, m, c in modules(args.E, args.H, max_length=max(rows, 16)) if n == args.layer]
    if not found:
        return None
    return found[0][0].eval(), found[0][1], torch.randn(args.B, rows, args.E)


def export(args):
    from upstream_modules import export_onnx

    module, call, x = build(args)
    export_onnx(module, call, x, args.export)


def child(args):
    import tempfile

    import onnxruntime as ort
    import torch

    from upstream_modules import load_session

    torch.set_num_threads(args.threads)
    built = build(args)
    if built is None:
        return None
    module, _, x = built
    mode, B, T, E, H = args.mode, args.B, args.T, args.E, args.H
    path = os.path.join(tempfile.mkdtemp(prefix="tokenmix-ort-"), "m.onnx")
    cmd = [sys.executable, os.path.abspath(__file__), "--export", path] + [
        f"--{k}={getattr(args, k)}" for k in ("layer", "mode", "B", "T", "E", "H")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1][:120] if lines else f"export failed ({done.returncode})"}
    session = load_session(path, args.threads)
    feed = {"x": x.numpy()}
    # Same-process BLAS reference, as torch_baseline.py: sgemm at the projection shape offline, one
    # gemv per E x E of the module's weights for a stream step.
    params = sum(p.numel() for p in module.parameters())
    M = B * T if mode == "offline" else 1
    mats = 1 if mode == "offline" else max(1, round(params / (E * E)))
    a = torch.randn(M, E)
    ws = [torch.randn(E, E) for _ in range(mats)]

    def ref():
        with torch.no_grad():
            for w in ws:
                torch.nn.functional.linear(a, w)

    rss0 = tb.maxrss_mib()
    session.run(None, feed)  # warm-up; its resident-memory growth is peak_mib
    peak = tb.maxrss_mib() - rss0
    ref()
    layer_ms, ref_ms = [], []
    for _ in range(args.repeats if mode == "offline" else args.steps):
        t0 = time.perf_counter()
        session.run(None, feed)
        layer_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        ref()
        ref_ms.append((time.perf_counter() - t0) * 1e3)
    med, mn = tb.stats(layer_ms)
    ref_med, _ = tb.stats(ref_ms)
    ref_gflops = 2.0 * M * E * E * mats / (ref_med * 1e6)
    flops = {b.name: b for b in tb.BASELINES}[args.layer].flops(mode, B, T, E, H)
    gflops = flops / (med * 1e6)
    return {"impl": "onnxruntime", "layer": args.layer, "mode": mode, "shape": tb.shape_str(mode, B, T, E, H),
            "dims": {"B": B, "T": T, "E": E, "H": H}, "threads": args.threads, "median_ms": med,
            "min_ms": mn, "flops": flops, "gflops": gflops,
            "ref": f"torch linear {M}x{E}x{E}" if mode == "offline" else f"{mats}x torch linear (gemv) {E}x{E}",
            "ref_gflops": ref_gflops, "peak_fraction": gflops / ref_gflops, "peak_mib": peak,
            "onnxruntime": ort.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--json", default="")
    p.add_argument("--filter", default="", help="regex on 'layer/mode/shape'")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=50, help="timed steps per stream measurement")
    p.add_argument("--sweep", action="store_true", help="also offline B=1 at T = 64 .. 8192")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    for k in ("layer", "mode"):
        p.add_argument("--" + k, help=argparse.SUPPRESS)
    for k in ("B", "T", "E", "H"):
        p.add_argument("--" + k, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.export:
        export(args)
        return 0
    if args.child:
        args.threads = args.threads[0]
        print(json.dumps(child(args)))
        return 0
    filt = re.compile(args.filter)
    results = []
    print(f"{'layer':15} {'mode':7} {'shape':18} {'thr':>3} {'median_ms':>10} {'min_ms':>10} {'GFLOP/s':>8}  "
          f"{'peak%':>6} {'peak_MiB':>9}", flush=True)
    for threads in args.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
        for b in tb.BASELINES:
            for mode, B, T, E, H in tb.standard_shapes(args.sweep):
                if not filt.search(f"{b.name}/{mode}/{tb.shape_str(mode, B, T, E, H)}"):
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--threads", str(threads),
                       "--layer", b.name, "--mode", mode, "--B", str(B), "--T", str(T), "--E", str(E),
                       "--H", str(H), "--repeats", str(args.repeats), "--steps", str(args.steps)]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                if r is None:
                    continue
                if "error" in r:
                    print(f"{b.name} {mode} {tb.shape_str(mode, B, T, E, H)} threads={threads}: ORT: {r['error']}",
                          file=sys.stderr, flush=True)
                    continue
                results.append(r)
                print(f"{r['layer']:15} {r['mode']:7} {r['shape']:18} {threads:3d} {r['median_ms']:10.3f} "
                      f"{r['min_ms']:10.3f} {r['gflops']:8.1f}  {100 * r['peak_fraction']:5.0f}% "
                      f"{r['peak_mib']:9.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
