"""The upstream PyTorch modules vs tokenmix.from_torch of them (and vs ONNX Runtime), from Python.

    make bench-python          # = the command below, after installing python/requirements-bench.txt
    PYTHONPATH=build/python/package .venv/bin/python bench/python_bench.py --threads 1 2 --ort --ort-int8 --precision fp32 bf16 int8

For every supported family (E=512, H=8; offline B=8 T=256 and B=1 T=4096) the real upstream module
(random weights) and its tokenmix layer are called alternately with the same arguments, under
torch.no_grad(), with the same thread count on both sides (torch.set_num_threads and
tokenmix.set_num_threads); medians over --repeats calls after one warm-up call each. With --ort the
module is also exported with torch.onnx.export (opset 14, the shape's B and T fixed) and run on ONNX
Runtime's CPU provider (intra_op_num_threads = the thread count, inter_op 1, sequential execution,
no spin-waiting),
alternating with the other two; an export or session that fails is reported as such. --precision runs
tokenmix's layer in each listed precision (fp32 bf16 int8), and --ort-int8 adds ONNX Runtime on the
model quantized with onnxruntime.quantization.quantize_dynamic (int8 weights, dynamic activations).
Prints one row per implementation and measurement: median time, the speed-up of that row over PyTorch,
ORT fp32 and ORT int8 (">1" = faster than them), and its error against the upstream fp32 output
(max |y - y_upstream| / max |y_upstream|, the parity gate's measure).
"""
import argparse
import statistics
import time

import torch

import tokenmix
from upstream_modules import modules, ort_session

E, H = 512, 8
SHAPES = [(8, 256), (1, 4096)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--filter", default="", help="only layers whose name contains this")
    p.add_argument("--precision", nargs="+", default=["fp32"], help="tokenmix precisions to run (fp32 bf16 int8)")
    p.add_argument("--ort", action="store_true", help="add ONNX Runtime (pip install onnxruntime)")
    p.add_argument("--ort-int8", action="store_true", help="add ONNX Runtime on the quantize_dynamic int8 model")
    a = p.parse_args()
    print(f"{'layer':<16}{'shape':<10}{'thr':>4}  {'impl':<16}{'ms':>10}{'x_torch':>9}{'x_ort':>8}{'x_ort8':>8}"
          f"{'err':>10}  note")
    for threads in a.threads:
        torch.set_num_threads(threads)
        tokenmix.set_num_threads(threads)
        for name, module, call in modules(E, H):
            if a.filter not in name:
                continue
            module = module.eval()
            for B, T in SHAPES:
                x = torch.randn(B, T, E)
                # Every implementation: name -> (callable of x, note). Called alternately, one by one.
                impls, notes = {"torch": lambda: call(module, x)}, {}
                for prec in a.precision:
                    layer = tokenmix.from_torch(module, precision=prec)
                    impls[f"tokenmix-{prec}"] = (lambda l: lambda: call(l, x))(layer)
                    notes[f"tokenmix-{prec}"] = f"{layer.precision}, {layer.gemm}"
                feed = {"x": x.numpy()}
                for kind, wanted in (("ort-fp32", a.ort), ("ort-int8", a.ort_int8)):
                    if not wanted:
                        continue
                    session, why = ort_session(module, call, x, threads, int8=kind == "ort-int8")
                    if session:
                        impls[kind] = (lambda s: lambda: torch.from_numpy(s.run(None, feed)[0]))(session)
                    else:
                        notes[kind] = f"ORT: {why}"
                with torch.no_grad():
                    outputs = {k: f() for k, f in impls.items()}  # warm-up (first-call allocations)
                    times = {k: [] for k in impls}
                    for _ in range(a.repeats):
                        for k, f in impls.items():
                            t = time.perf_counter()
                            f()
                            times[k].append(time.perf_counter() - t)
                want = outputs["torch"]
                scale = want.abs().max().item()
                ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
                for k in list(impls) + [k for k in notes if k not in impls]:
                    row = f"{name:<16}{f'B{B}_T{T}':<10}{threads:>4}  {k:<16}"
                    if k not in impls:
                        print(row + f"{'-':>10}{'':>35}  {notes[k]}", flush=True)
                        continue
                    ratio = lambda other: f"{ms[other] / ms[k]:>7.2f}x" if other in ms else f"{'-':>8}"
                    err = (outputs[k] - want).abs().max().item() / scale
                    print(row + f"{ms[k]:>10.2f}{ratio('torch'):>9}{ratio('ort-fp32')}{ratio('ort-int8')}{err:>10.1e}"
                          f"  {notes.get(k, '')}", flush=True)


if __name__ == "__main__":
    main()
