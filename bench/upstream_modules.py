"""The upstream PyTorch modules the Python benchmarks run, and their ONNX Runtime sessions.

Shared by bench/python_bench.py (upstream vs tokenmix.from_torch vs ORT, alternating in one process)
and bench/ort_baseline.py (ORT rows in `tokenmix bench`'s JSON schema, for bench/compare). Needs the
packages of python/requirements-test.txt (espnet, speechbrain 0.5.16, labml-nn, continual-inference)
and, for ort_session, python/requirements-bench.txt (onnxruntime, onnx).
"""
import os
import tempfile

import torch


def modules(E, H, max_length=4096):
    """(name, module, call(f, x)) for each measured layer, named as tokenmix bench's registry; x is
    (B, T, E) with T <= max_length; the modules carry upstream's default (random) initialisation."""
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
        ("hypermixing", HyperMixing(E, 4 * E, num_heads=H, max_length=max_length), lambda f, x: f(x, x, x)[0]),
        ("labml_mha", MultiHeadAttention(H, E, 0.0), seq_first),
        ("primer_ez", MultiDConvHeadAttention(H, E, 0.0), seq_first),
        # Only the output is used, so it is asked for alone (ONNX Runtime prunes what no output needs).
        ("continual_retro", co.RetroactiveMultiheadAttention(E, H, sequence_len=max_length, batch_first=True),
         lambda f, x: f(x, need_weights=False)[0]),
    ]


def export_onnx(module, call, x, path, int8=False):
    """Writes call(module, x) to path with torch.onnx.export (opset 14, x's shape fixed; input "x",
    output "y"), quantized with onnxruntime.quantization.quantize_dynamic (int8 weights, dynamic
    activations) when int8. Returns the path of the model to load (path, or path + ".int8.onnx")."""

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, inp):
            return call(self.inner, inp)

    # Traced with gradients enabled: under no_grad, torch 1.13 routes nn.MultiheadAttention
    # (continual's forward) to a fused op that ONNX export does not support.
    with torch.enable_grad():
        torch.onnx.export(Wrapped().eval(), (x,), path, opset_version=14, input_names=["x"], output_names=["y"])
    if not int8:
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(path, path + ".int8.onnx", weight_type=QuantType.QInt8)
    return path + ".int8.onnx"


def load_session(path, threads):
    """An ONNX Runtime CPU session of the model at path on `threads` intra-op threads, sequential,
    without spin-waiting (its spinning workers would take the cores from the calls that alternate
    with it, which sleep between calls)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_session(module, call, x, threads, int8=False):
    """(session, None): load_session of call(module, x) exported by export_onnx; or (None, reason) when
    the export or the session fails."""
    try:
        return load_session(export_onnx(module, call, x, os.path.join(tempfile.mkdtemp(), "m.onnx"), int8), threads), None
    except Exception as e:  # noqa: BLE001 - any failure is the result to report
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
