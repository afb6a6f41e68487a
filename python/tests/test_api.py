"""The package API without upstream modules: streams (== offline, state round trips, pickling),
save / load, errors, threads."""
import json
import pickle
import struct
import threading

import numpy as np
import pytest

import tokenmix

from conftest import REFERENCE_DIR, assert_close

# One reference case per family, loaded as the layer under test, with the stream options it takes.
LAYERS = {
    "espnet_mha": ("espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors", {"left_context": 0}),
    "espnet_mha_window": ("espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors", {"left_context": 4}),
    "primer_ez": ("primer_ez/primer_mdha_d16_h2_s9_b3_none.safetensors", {}),
    "fastformer": ("fastformer/fastformer_nomask_E32_H4_B3_T17.safetensors", {"window": 5, "position": 2}),
    "hypermixing": ("hypermixing/hypermixing_e32_h4_tied_b3_t7.safetensors", {"window": 4}),
    "continual_so": ("continual/continual_so_stream_e8_h2_l7_b2_qi2.safetensors", {}),
    "continual_retro": ("continual/continual_retro_fwd_e16_h2_l7_b2.safetensors", {}),
}


def load(name):
    path, options = LAYERS[name]
    return tokenmix.load(REFERENCE_DIR / path), options


def chunks(rng, T):
    cuts, t = [], 0
    while t < T:
        c = int(rng.integers(1, 5))
        cuts.append((t, min(T, t + c)))
        t += c
    return cuts


@pytest.mark.parametrize("name", LAYERS)
def test_stream_equals_offline_in_any_chunking(name, rng):
    layer, options = load(name)
    B, T = 2, 13
    x = rng.standard_normal((B, T, layer.d_model), dtype=np.float32)
    expected = layer.stream_reference(x, **options)
    s = layer.stream(B, **options)
    got = [s.push(np.ascontiguousarray(x[:, a:b])) for a, b in chunks(rng, T)]
    assert_close(np.concatenate(got, axis=1), expected, 1e-5, 1e-5, name)


@pytest.mark.parametrize("name", LAYERS)
def test_state_round_trips_dict_file_and_pickle(name, rng, tmp_path):
    layer, options = load(name)
    B, E = 2, layer.d_model
    x = rng.standard_normal((B, 12, E), dtype=np.float32)
    s = layer.stream(B, **options)
    s.push(x[:, :7].copy())
    state, path = s.state(), tmp_path / "s.safetensors"
    assert all(isinstance(v, np.ndarray) for v in state.values()) and "config" in state
    s.save(path)
    blob = pickle.dumps(s)
    tail = x[:, 7:].copy()
    expected = s.push(tail)
    from_dict = layer.stream(B, **options)
    from_dict.load_state(state)
    from_file = layer.stream(B, **options)
    from_file.restore(path)
    unpickled = pickle.loads(blob)
    for other in (from_dict, from_file, unpickled):
        np.testing.assert_array_equal(other.push(tail), expected)
    assert unpickled.layer.module == layer.module


def test_bad_state_leaves_the_stream_unchanged(rng):
    layer, options = load("fastformer")
    s = layer.stream(2, **options)
    x = rng.standard_normal((2, 6, layer.d_model), dtype=np.float32)
    s.push(x)
    before = s.state()
    other = layer.stream(3, **options).state()  # another batch size
    with pytest.raises(ValueError, match="batch"):
        s.load_state(other)
    after = s.state()
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_reset_row_restarts_one_row(rng):
    layer, options = load("espnet_mha")
    x = rng.standard_normal((2, 6, layer.d_model), dtype=np.float32)
    s = layer.stream(2)
    s.push(x[:, :3].copy())
    s.reset_row(1)
    y = s.push(x[:, 3:].copy())
    fresh = layer.stream(1).push(x[1:, 3:].copy())
    assert_close(y[1:], fresh, 1e-6, 1e-6, "reset row")
    with pytest.raises(ValueError, match="reset_row"):
        s.reset_row(2)


def test_layer_pickle_save_and_load(tmp_path, rng):
    layer, _ = load("hypermixing")
    x = rng.standard_normal((2, 5, layer.d_model), dtype=np.float32)
    expected = layer(x)[0]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(layer))(x)[0], expected)
    tokenmix.save(layer, tmp_path / "m.safetensors")
    np.testing.assert_array_equal(tokenmix.load(tmp_path / "m.safetensors")(x)[0], expected)


def write_bf16_checkpoint(path, module, config, weights):
    """What safetensors.torch.save_file({k: v.bfloat16() ...}) writes, plus the module / config
    metadata: every weight as BF16 (rounded to nearest even by torch)."""
    torch = pytest.importorskip("torch")
    header, blobs, widened, offset = {}, [], {}, 0
    for k, v in weights.items():
        t = torch.from_numpy(np.array(v, dtype=np.float32)).bfloat16()
        blob = t.view(torch.int16).numpy().tobytes()
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        widened[k] = t.float().numpy()
        offset += len(blob)
    header["__metadata__"] = {"module": module, "config": json.dumps(config)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return widened


@pytest.mark.parametrize("name", ["espnet_mha", "fastformer", "hypermixing", "continual_retro"])
def test_bf16_checkpoint_loads_as_stored(name, tmp_path, rng):
    """A BF16 checkpoint loads at fp32 and (where the CPU runs it) bf16 to the same layer as its values
    widened to float32; state_dict() returns them exactly widened, and a pickled copy computes the same."""
    layer, _ = load(name)
    path = tmp_path / "bf16.safetensors"
    widened = write_bf16_checkpoint(path, layer.module, layer.config, layer.state_dict())
    x = rng.standard_normal((2, 6, layer.d_model), dtype=np.float32)
    for precision in ("fp32", "bf16"):
        try:
            want = tokenmix.make_layer(layer.module, layer.config, widened, precision)
        except ValueError as e:
            assert precision == "bf16" and "no AVX512-BF16 or AMX-BF16" in str(e)
            continue
        got = tokenmix.load(path, precision=precision)
        assert (got.precision, got.weight_bytes) == (want.precision, want.weight_bytes)
        np.testing.assert_array_equal(got.forward_unified(x), want.forward_unified(x))
        sd = got.state_dict()
        assert sd.keys() == widened.keys()
        for k, v in widened.items():
            np.testing.assert_array_equal(sd[k], v, err_msg=k)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(got)).forward_unified(x), want.forward_unified(x))


def test_bad_inputs_are_value_errors(rng, tmp_path):
    layer, _ = load("espnet_mha")
    E = layer.d_model
    x = rng.standard_normal((2, 5, E), dtype=np.float32)
    with pytest.raises(ValueError, match=r"EspnetMultiHeadedAttention::forward: query: expected shape"):
        layer(x[:, :, :-1].copy())
    with pytest.raises(ValueError, match="query: expected dtype float32, got float64"):
        layer(x.astype(np.float64))
    with pytest.raises(ValueError, match="query: expected a C-contiguous array"):
        layer(x[:, ::2])
    with pytest.raises(ValueError, match=r"mask: expected a bool .*floating-point additive masks are not supported"):
        layer(x, None, np.ones((2, 1, 5), np.float32))
    with pytest.raises(ValueError, match="query: expected a numpy array or torch tensor, got list"):
        layer([[1.0]])
    with pytest.raises(ValueError, match=r"::push: chunk: expected shape \(2, C, 32\)"):
        layer.stream(2).push(np.zeros((2, 1, E + 1), np.float32))
    with pytest.raises(ValueError, match="not a sequence layer"):
        tokenmix.make_layer("torch.nn.Linear", {}, {})
    with pytest.raises(ValueError, match="unknown option 'n_heads'"):
        tokenmix.make_layer("espnet2.asr.state_spaces.attention.MultiHeadedAttention",
                            {"n_feat": 8, "n_heads": 2}, {})
    with pytest.raises(ValueError, match="config: not JSON-serialisable"):
        tokenmix.make_layer("espnet2.asr.state_spaces.attention.MultiHeadedAttention", {"n_feat": object()}, {})
    with pytest.raises(ValueError, match="no such file|cannot open"):
        tokenmix.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="bad.safetensors"):
        tokenmix.load(bad)
    with pytest.raises(ValueError, match="set_num_threads: n"):
        tokenmix.set_num_threads(-1)


def test_four_threads_share_one_layer(rng):
    layer, _ = load("primer_ez")
    xs = [rng.standard_normal((9, 3, layer.d_model), dtype=np.float32) for _ in range(8)]
    expected = [layer(query=x, key=x, value=x) for x in xs]
    results = [None] * 4

    def work(i):
        results[i] = [layer(query=x, key=x, value=x) for x in xs for _ in range(3)][::3]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        for a, e in zip(r, expected):
            np.testing.assert_array_equal(a, e)


def test_set_num_threads_keeps_results():
    layer, _ = load("fastformer")
    x = np.random.default_rng(0).standard_normal((3, 17, layer.d_model), dtype=np.float32)
    try:
        tokenmix.set_num_threads(1)
        assert tokenmix.get_num_threads() == 1
        one = layer(x, None)
        tokenmix.set_num_threads(2)
        assert_close(layer(x, None), one, 1e-6, 1e-6, "1 vs 2 threads")
    finally:
        tokenmix.set_num_threads(0)


def test_kernel_isa_follows_the_cpu_and_TOKENMIX_ISA():
    import os
    import subprocess
    import sys
    forced = os.environ.get("TOKENMIX_ISA")
    assert tokenmix.kernel_isa() == forced if forced else tokenmix.kernel_isa() in ("avx512_bf16", "avx2", "generic")

    def child(value):
        env = dict(os.environ, TOKENMIX_ISA=value)
        return subprocess.run([sys.executable, "-c", "import tokenmix; print(tokenmix.kernel_isa())"], env=env,
                              capture_output=True, text=True, timeout=120)

    generic = child("generic")
    assert generic.returncode == 0 and generic.stdout.strip() == "generic", generic.stderr
    bad = child("sse9")
    assert bad.returncode != 0
    assert ("ImportError: tokenmix: kernel_isa: TOKENMIX_ISA: expected 'generic', 'avx2' or 'avx512_bf16' (or "
            "unset: the best this CPU has), got 'sse9'") in bad.stderr, bad.stderr
