#!/usr/bin/python3
"""PyTorch baselines for `tokenmix bench` (same shapes, same thread counts, same JSON schema).

Run with Debian's PyTorch 1.13.1 (python3-torch) and numpy only:

    /usr/bin/python3 bench/torch_baseline.py --threads 1 2 --json torch.json

Each layer is implemented plainly in PyTorch from its SPEC (tests/data/reference/<family>/SPEC.md).
Before timing, every implementation is checked against its reference cases
(tests/data/reference/<family>/*.safetensors, read with numpy); a mismatch aborts the run.
Each measurement then runs in a fresh child process with OPENBLAS_NUM_THREADS, OMP_NUM_THREADS
and MKL_NUM_THREADS set to the thread count, OMP_WAIT_POLICY=PASSIVE, and torch.set_num_threads(n),
so peak_mib (growth of ru_maxrss over the first call) belongs to that measurement alone.

Modes (same as tokenmix bench):
  offline  one forward of x (B, T, E)
  stream   one new token with `ctx` tokens of history, done the way upstream decodes: the layer's
           own step() with the whole prefix as memory (ESPnet MHA re-projects the prefix each step).

Adding a layer: write a Baseline subclass (make / check / offline_fn / stream_fn / flops) and add
it to BASELINES. flops must match the C++ registry's count (tools/cli/bench_families.cpp) so the
GFLOP/s columns compare like for like.
"""
import argparse
import json
import math
import os
import re
import resource
import struct
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "tests", "data", "reference")


# --------------------------------------------------------------------------------------------------
# Reference cases
# --------------------------------------------------------------------------------------------------

def read_case(path):
    """safetensors -> ({name: np.ndarray}, metadata dict) (see tests/data/reference/README.md)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    dt = {"F32": np.float32, "BOOL": np.bool_}
    tensors = {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype=dt[v["dtype"]])
               .reshape(v["shape"]).copy() for k, v in header.items()}
    return tensors, meta


def case_files(family):
    folder = os.path.join(REFERENCE, family)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))


def close(a, b, atol, rtol):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False, float("inf")
    err = np.abs(a - b)
    return bool(np.all(err <= atol + rtol * np.abs(b))), float(err.max(initial=0.0))


def load_params(module, tensors):
    import torch
    sd = {k[len("param."):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("param.")}
    module.load_state_dict(sd, strict=True)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------

class Baseline:
    """One layer family. Subclasses set `name` and implement the methods below."""
    name = ""

    def make(self, E, H):
        """A module of width E with H heads, random weights (eval mode)."""
        raise NotImplementedError

    def check(self):
        """Replays every reference case; returns (cases, max_abs_err) or raises AssertionError."""
        raise NotImplementedError

    def offline_fn(self, module, B, T, E):
        """A no-argument callable running one forward of a (B, T, E) input."""
        raise NotImplementedError

    def stream_fn(self, module, B, ctx, E):
        """A callable producing the output for one new token after ctx tokens, as upstream would;
        None when the layer has no step."""
        return None

    def flops(self, mode, B, T, E, H):
        """Same count as the C++ registry entry."""
        raise NotImplementedError


def mha_flops(rows_projected, batch, q, k, E):
    # Four E x E projections of the projected rows, plus Q·Kᵀ and P·V (2·q·k·E each per batch row).
    return 8.0 * rows_projected * E * E + 4.0 * batch * q * k * E


class EspnetMha(Baseline):
    """espnet2.asr.state_spaces.attention.MultiHeadedAttention, written from its SPEC."""
    name = "espnet_mha"

    @staticmethod
    def module_class():
        import torch

        class MultiHeadedAttention(torch.nn.Module):
            def __init__(self, n_feat, n_head):
                super().__init__()
                self.h, self.d_k = n_head, n_feat // n_head
                self.linear_q = torch.nn.Linear(n_feat, n_feat)
                self.linear_k = torch.nn.Linear(n_feat, n_feat)
                self.linear_v = torch.nn.Linear(n_feat, n_feat)
                self.linear_out = torch.nn.Linear(n_feat, n_feat)

            def forward(self, query, memory=None, mask=None):
                if memory is None:
                    memory = query
                B = query.size(0)
                q = self.linear_q(query).view(B, -1, self.h, self.d_k).transpose(1, 2)
                k = self.linear_k(memory).view(B, -1, self.h, self.d_k).transpose(1, 2)
                v = self.linear_v(memory).view(B, -1, self.h, self.d_k).transpose(1, 2)
                scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
                if mask is not None:
                    masked = mask.unsqueeze(1).eq(0)  # (B, 1, T1|1, T2), True = masked
                    scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
                    attn = torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)
                else:
                    attn = torch.softmax(scores, dim=-1)
                x = torch.matmul(attn, v).transpose(1, 2).contiguous().view(B, -1, self.h * self.d_k)
                return self.linear_out(x), attn

            def step(self, query, state, memory=None, mask=None):
                if query.dim() == 2:
                    query = query.unsqueeze(1)
                y, attn = self.forward(query, memory, mask)
                return y.squeeze(1), state, attn

        return MultiHeadedAttention

    def make(self, E, H):
        import torch
        m = self.module_class()(E, H).eval()
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in m.parameters():
                std = 1.0 / math.sqrt(p.shape[1]) if p.dim() == 2 else 0.3
                p.copy_(torch.randn(p.shape, generator=g) * std)
        return m

    def check(self):
        import torch
        worst, n = 0.0, 0
        for path in case_files(self.name):
            t, meta = read_case(path)
            cfg = json.loads(meta["config"])
            m = self.module_class()(cfg["n_feat"], cfg["n_head"]).eval()
            load_params(m, t)
            T = {k: torch.from_numpy(v) for k, v in t.items()}
            call = json.loads(meta["call"])
            got = {}
            with torch.no_grad():
                if isinstance(call, dict):  # forward
                    a = call["args"]
                    y, attn = m(T[a["query"]], T[a["memory"]] if a.get("memory") else None,
                                T[a["mask"]] if a.get("mask") else None)
                    got["out.y"], got["out.attn"] = y, attn
                else:  # step sequence
                    steps, attns = [], []
                    for i, c in enumerate(call):
                        a = c["args"]
                        q = T["in.query"][:, i, :]
                        mem = a.get("memory")
                        if mem is None:
                            memory = None
                        elif mem == "in.memory":
                            memory = T["in.memory"]
                        else:
                            stop = int(re.fullmatch(r"in\.query\[:, :(\d+), :\]", mem).group(1))
                            assert stop == i + 1, mem
                            memory = T["in.query"][:, :stop, :]
                        y, _, attn = m.step(q, None, memory, T[a["mask"]] if a.get("mask") else None)
                        steps.append(y)
                        attns.append(attn)
                    got["out.steps"] = torch.stack(steps, 0)
                    if "out.step_attn" in t:
                        got["out.step_attn"] = torch.stack(attns, 0)
            for k, v in t.items():
                if not k.startswith("out."):
                    continue
                assert k in got, f"{os.path.basename(path)}: no output for {k}"
                ok, err = close(got[k].numpy(), v, 1e-5, 1e-5)
                assert ok, f"{os.path.basename(path)}: {k} max abs err {err:.3g}"
                worst = max(worst, err)
            n += 1
        return n, worst

    def offline_fn(self, module, B, T, E):
        import torch
        x = torch.randn(B, T, E, generator=torch.Generator().manual_seed(99))
        return lambda: module(x)

    def stream_fn(self, module, B, ctx, E):
        # Upstream's way to attend over the history with step(): memory = the whole prefix (ctx old
        # tokens plus the new one), re-projected every step. No KV cache exists upstream.
        import torch
        prefix = torch.randn(B, ctx + 1, E, generator=torch.Generator().manual_seed(98))
        token = prefix[:, -1, :]
        return lambda: module.step(token, None, prefix)

    def flops(self, mode, B, T, E, H):
        return mha_flops(B * T, B, T, T, E) if mode == "offline" else mha_flops(B, B, 1, T + 1, E)


# The table: one entry per family.
BASELINES = [EspnetMha()]


# --------------------------------------------------------------------------------------------------
# Measurement (child process)
# --------------------------------------------------------------------------------------------------

def shape_str(mode, B, T, E, H):
    return f"B{B}_{'T' if mode == 'offline' else 'ctx'}{T}_E{E}_H{H}"


def standard_shapes(sweep):
    s = [("offline", 8, 256, 512, 8), ("offline", 1, 4096, 512, 8)]
    if sweep:
        s += [("offline", 1, t, 512, 8) for t in (64, 128, 256, 512, 1024, 2048, 8192)]
    s.append(("stream", 1, 256, 512, 8))
    return s


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def stats(ms):
    ms = sorted(ms)
    n = len(ms)
    median = ms[n // 2] if n % 2 else 0.5 * (ms[n // 2 - 1] + ms[n // 2])
    return median, ms[0]


def child(args):
    import torch
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    base = {b.name: b for b in BASELINES}[args.layer]
    mode, B, T, E, H = args.mode, args.B, args.T, args.E, args.H
    module = base.make(E, H)
    fn = base.offline_fn(module, B, T, E) if mode == "offline" else base.stream_fn(module, B, T, E)
    if fn is None:
        return None
    # BLAS reference in the same process, as tokenmix bench does: torch's linear at the projection
    # shape (sgemm M=B*T, N=K=E) offline; for stream one token through as many distinct E x E
    # weights as the layer has parameters (gemv; the time to stream the weight bytes).
    params = sum(p.numel() for p in module.parameters())
    M = B * T if mode == "offline" else 1
    mats = 1 if mode == "offline" else max(1, round(params / (E * E)))
    a = torch.randn(M, E)
    ws = [torch.randn(E, E) for _ in range(mats)]

    def ref():
        for w in ws:
            torch.nn.functional.linear(a, w)

    rss0 = maxrss_mib()
    fn()  # warm-up; its resident-memory growth is the measurement's peak_mib
    peak = maxrss_mib() - rss0
    ref()
    # Layer and reference calls alternate so both see the same machine load.
    layer_ms, ref_ms = [], []
    for _ in range(args.repeats if mode == "offline" else args.steps):
        t0 = time.perf_counter()
        fn()
        layer_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        ref()
        ref_ms.append((time.perf_counter() - t0) * 1e3)
    med, mn = stats(layer_ms)
    ref_med, _ = stats(ref_ms)
    ref_gflops = 2.0 * M * E * E * mats / (ref_med * 1e6)
    flops = base.flops(mode, B, T, E, H)
    gflops = flops / (med * 1e6)
    return {"impl": "pytorch", "layer": base.name, "mode": mode, "shape": shape_str(mode, B, T, E, H),
            "dims": {"B": B, "T": T, "E": E, "H": H}, "threads": args.threads, "median_ms": med,
            "min_ms": mn, "flops": flops, "gflops": gflops,
            "ref": f"torch linear {M}x{E}x{E}" if mode == "offline" else f"{mats}x torch linear (gemv) {E}x{E}",
            "ref_gflops": ref_gflops, "peak_fraction": gflops / ref_gflops, "peak_mib": peak,
            "torch": torch.__version__}


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--json", default="")
    p.add_argument("--filter", default="", help="regex on 'layer/mode/shape'")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=50, help="timed steps per stream measurement")
    p.add_argument("--sweep", action="store_true", help="also offline B=1 at T = 64 .. 8192")
    p.add_argument("--skip-check", action="store_true", help="do not replay the reference cases first")
    # Internal: one measurement in this process.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for k in ("layer", "mode"):
        p.add_argument("--" + k, help=argparse.SUPPRESS)
    for k in ("B", "T", "E", "H"):
        p.add_argument("--" + k, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.threads = args.threads[0]
        print(json.dumps(child(args)))
        return 0

    filt = re.compile(args.filter)
    if not args.skip_check:
        import torch
        torch.set_num_threads(1)
        for b in BASELINES:
            n, err = b.check()
            print(f"check {b.name}: {n} reference cases pass (max abs err {err:.2e})", flush=True)
    results = []
    print(f"{'layer':12} {'mode':7} {'shape':18} {'thr':>3} {'median_ms':>10} {'min_ms':>10} {'GFLOP/s':>8}  "
          f"{'reference':26} {'GFLOP/s':>8} {'peak%':>6} {'peak_MiB':>9}", flush=True)
    for threads in args.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
        for b in BASELINES:
            for mode, B, T, E, H in standard_shapes(args.sweep):
                if not filt.search(f"{b.name}/{mode}/{shape_str(mode, B, T, E, H)}"):
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--threads", str(threads),
                       "--layer", b.name, "--mode", mode, "--B", str(B), "--T", str(T), "--E", str(E),
                       "--H", str(H), "--repeats", str(args.repeats), "--steps", str(args.steps)]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                if r is None:
                    continue
                results.append(r)
                print(f"{r['layer']:12} {r['mode']:7} {r['shape']:18} {threads:3d} {r['median_ms']:10.3f} "
                      f"{r['min_ms']:10.3f} {r['gflops']:8.1f}  {r['ref']:26} {r['ref_gflops']:8.1f} "
                      f"{100 * r['peak_fraction']:5.0f}% {r['peak_mib']:9.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
