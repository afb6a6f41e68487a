"""The upstream PyTorch modules vs tokenmix.from_torch of them (and vs ONNX Runtime), from Python.

    make bench-python          # = the command below, after installing python/requirements-bench.txt
    PYTHONPATH=build/python/package .venv/bin/python bench/python_bench.py --threads 1 2 --ort

For every supported family (E=512, H=8; offline B=8 T=256 and B=1 T=4096) the real upstream module
(random weights) and its tokenmix layer are called alternately with the same arguments, under
torch.no_grad(), with the same thread count on both sides (torch.set_num_threads and
tokenmix.set_num_threads); medians over --repeats calls after one warm-up call each. With --ort the
module is also exported with torch.onnx.export (opset 14, the shape's B and T fixed) and run on ONNX
Runtime's CPU provider (intra_op_num_threads = the thread count, inter_op 1, sequential execution,
no spin-waiting),
alternating with the other two; an export or session that fails is reported as such. Prints one row
per measurement: times, tokenmix's speed-up over each, and each side's largest difference from the
upstream output.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

import tokenmix

E, H = 512, 8
SHAPES = [(8, 256), (1, 4096)]


def modules():
    """(name, module, call(f, x)) for each family; x is (B, T, E)."""
    import continual as co
    from espnet2.asr.layers.fastformer import FastSelfAttention
    from espnet2.asr.state_spaces.attention import MultiHeadedAttention
    from labml_nn.transformers.mha import MultiHeadAttention
    from labml_nn.transformers.primer_ez import MultiDConvHeadAttention
    from speechbrain.lobes.models.transformer.hypermixing import HyperMixing

    def seq_first(f, x):
        x = x.transpose(0, 1).contiguous()
        return f(query=x, key=x, value=x)

    return [
        ("espnet_mha", MultiHeadedAttention(E, H), lambda f, x: f(x)[0]),
        ("fastformer", FastSelfAttention(E, H, 0.0), lambda f, x: f(x, None)),
        ("hypermixing", HyperMixing(E, 4 * E, num_heads=H, max_length=4096), lambda f, x: f(x, x, x)[0]),
        ("labml_mha", MultiHeadAttention(H, E, 0.0), seq_first),
        ("primer_ez", MultiDConvHeadAttention(H, E, 0.0), seq_first),
        # Only the output is used, so it is asked for alone (ONNX Runtime prunes what no output needs).
        ("continual_retro", co.RetroactiveMultiheadAttention(E, H, sequence_len=4096, batch_first=True),
         lambda f, x: f(x, need_weights=False)[0]),
    ]


def ort_session(module, call, x, threads):
    """An ONNX Runtime session running call(module, x) exported with torch.onnx.export, or the reason
    it could not be made."""
    import onnxruntime as ort

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, inp):
            return call(self.inner, inp)

    path = os.path.join(tempfile.mkdtemp(), "m.onnx")
    try:
        # Traced with gradients enabled: under no_grad, torch 1.13 routes nn.MultiheadAttention
        # (continual's forward) to a fused op that ONNX export does not support.
        with torch.enable_grad():
            torch.onnx.export(Wrapped().eval(), (x,), path, opset_version=14, input_names=["x"], output_names=["y"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No spin-waiting after a run: ORT's spinning workers would take the cores from the PyTorch
        # and tokenmix calls that alternate with it (both of which sleep between calls).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]), None
    except Exception as e:  # noqa: BLE001 - any failure is the result to report
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--filter", default="", help="only layers whose name contains this")
    p.add_argument("--ort", action="store_true", help="add ONNX Runtime (pip install onnxruntime)")
    a = p.parse_args()
    print(f"{'layer':<16}{'shape':<10}{'thr':>4}{'torch_ms':>10}{'tokenmix_ms':>12}{'vs_torch':>9}{'diff':>9}"
          + (f"{'ort_ms':>10}{'vs_ort':>8}{'ort_diff':>10}" if a.ort else ""))
    for threads in a.threads:
        torch.set_num_threads(threads)
        tokenmix.set_num_threads(threads)
        for name, module, call in modules():
            if a.filter not in name:
                continue
            module = module.eval()
            layer = tokenmix.from_torch(module)
            for B, T in SHAPES:
                x = torch.randn(B, T, E)
                session, why = ort_session(module, call, x, threads) if a.ort else (None, None)
                feed = {"x": x.numpy()}
                with torch.no_grad():
                    expected, got = call(module, x), call(layer, x)  # warm-up (first-call allocations)
                    ort_out = session.run(None, feed)[0] if session else None
                    up, mine, ort_times = [], [], []
                    for _ in range(a.repeats):
                        t = time.perf_counter()
                        call(module, x)
                        up.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        call(layer, x)
                        mine.append(time.perf_counter() - t)
                        if session:
                            t = time.perf_counter()
                            session.run(None, feed)
                            ort_times.append(time.perf_counter() - t)
                u, m = 1e3 * statistics.median(up), 1e3 * statistics.median(mine)
                row = (f"{name:<16}{f'B{B}_T{T}':<10}{threads:>4}{u:>10.2f}{m:>12.2f}{u / m:>8.2f}x"
                       f"{(got - expected).abs().max().item():>9.1e}")
                if session:
                    o = 1e3 * statistics.median(ort_times)
                    row += f"{o:>10.2f}{o / m:>7.2f}x{abs(ort_out - expected.numpy()).max():>10.1e}"
                elif a.ort:
                    row += f"   ORT: {why}"
                print(row, flush=True)


if __name__ == "__main__":
    main()
