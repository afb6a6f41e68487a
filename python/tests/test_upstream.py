"""from_torch against the real upstream modules (installed from PyPI into the test venv): random
configurations and inputs per family and variant; the tokenmix call returns what the module returns,
within the family SPEC's tolerance, with the same structure (tuple / tensor / None)."""
import pickle

import numpy as np
import pytest
import torch

import tokenmix

from conftest import REFERENCE_DIR, assert_close, require

SEEDS = range(6)


def randomize(module, scale=0.5, seed=0):
    """Random weights, reproducibly (upstream initialisations leave biases / conv kernels at 0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def check(actual, expected, atol=1e-5, rtol=1e-5, what=""):
    if expected is None:
        assert actual is None, what
        return
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected)):
            check(a, e, atol, rtol, f"{what}[{i}]")
        return
    assert isinstance(actual, torch.Tensor), f"{what}: expected a torch tensor, got {type(actual).__name__}"
    # The SPEC tolerances hold for unit-scale outputs; random weights give larger ones, and float32
    # rounding grows with the scale: atol is taken relative to the output's largest magnitude.
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    assert_close(actual, expected.detach(), atol * scale, rtol, what)


@pytest.mark.parametrize("seed", SEEDS)
def test_espnet_multi_headed_attention(seed):
    attention = require("espnet2.asr.state_spaces.attention")
    g = torch.Generator().manual_seed(seed)
    H = int(torch.randint(1, 5, (1,), generator=g))
    E = H * int(torch.randint(1, 9, (1,), generator=g))
    B, T1, T2 = (int(v) for v in torch.randint(1, 9, (3,), generator=g))
    m = randomize(attention.MultiHeadedAttention(E, H), seed=seed)
    layer = tokenmix.from_torch(m)
    q, mem = torch.randn(B, T1, E, generator=g), torch.randn(B, T2, E, generator=g)
    pad = torch.rand(B, 1, T2, generator=g) > 0.3
    pad[:, :, 0] = True
    causal = torch.tril(torch.ones(T1, T1, dtype=torch.bool)).expand(B, T1, T1).contiguous()
    with torch.no_grad():
        check(layer(q), m(q), what="self")
        check(layer(q, mem, pad), m(q, mem, pad), what="cross, padding mask")
        check(layer(q, mask=causal), m(q, mask=causal), what="causal mask")
        q0 = q[:, 0].contiguous()  # the layer API takes contiguous inputs only (see test_errors)
        check(layer.step(q0, None, mem, pad), m.step(q0, None, mem, pad), what="step")
        check(layer(q0), m(q0), what="2-D query")


@pytest.mark.parametrize("seed", SEEDS)
def test_fastformer(seed):
    fastformer = require("espnet2.asr.layers.fastformer")
    g = torch.Generator().manual_seed(seed)
    H = int(torch.randint(1, 5, (1,), generator=g))
    E = H * int(torch.randint(1, 9, (1,), generator=g))
    B, T = (int(v) for v in torch.randint(1, 12, (2,), generator=g))
    m = randomize(fastformer.FastSelfAttention(E, H, 0.0), seed=seed)
    layer = tokenmix.from_torch(m)
    x = torch.randn(B, T, E, generator=g)
    mask = torch.rand(B, 1, T, generator=g) > 0.3
    mask[:, :, 0] = True
    with torch.no_grad():
        check(layer(x, None), m(x, None), what="no mask")
        check(layer(x, mask), m(x, mask), what="padding mask")


def _labml_classes():
    mha = require("labml_nn.transformers.mha")
    primer = require("labml_nn.transformers.primer_ez")
    variations = require("labml_nn.transformers.primer_ez.variations")
    efficient = require("labml_nn.transformers.primer_ez.efficient")
    return [mha.MultiHeadAttention, primer.MultiDConvHeadAttention, variations.MultiDSharedConvHeadAttention,
            variations.MultiDPHConvHeadAttention, efficient.MultiDConvHeadAttention]


@pytest.mark.parametrize("variant", range(5))
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_labml_and_primer_ez(variant, seed):
    cls = _labml_classes()[variant]
    g = torch.Generator().manual_seed(seed * 7 + variant)
    H = int(torch.randint(1, 5, (1,), generator=g))
    E = H * int(torch.randint(1, 9, (1,), generator=g))
    S, B = (int(v) for v in torch.randint(1, 10, (2,), generator=g))
    m = randomize(cls(H, E), seed=seed)
    layer = tokenmix.from_torch(m)
    x = torch.randn(S, B, E, generator=g)
    causal = torch.tril(torch.ones(S, S, dtype=torch.bool)).unsqueeze(-1)
    with torch.no_grad():
        check(layer(query=x, key=x, value=x), m(query=x, key=x, value=x), what=f"{cls.__name__} no mask")
        check(layer(query=x, key=x, value=x, mask=causal), m(query=x, key=x, value=x, mask=causal),
              what=f"{cls.__name__} causal")


@pytest.mark.parametrize("seed", SEEDS)
def test_hypermixing(seed):
    hm = require("speechbrain.lobes.models.transformer.hypermixing")
    g = torch.Generator().manual_seed(seed)
    H = int(torch.randint(1, 5, (1,), generator=g))
    E = 2 * H * int(torch.randint(1, 6, (1,), generator=g))
    K = H * int(torch.randint(1, 6, (1,), generator=g))
    tied, fix = bool(seed % 2), bool(seed % 3 == 0)
    B, T = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 20, (1,), generator=g))
    m = randomize(hm.HyperMixing(E, K, tied=tied, num_heads=H, fix_tm_hidden_size=fix, max_length=T + seed), seed=seed)
    layer = tokenmix.from_torch(m)
    assert layer.config["tied"] == tied and layer.config["max_length"] == T + seed
    x = torch.randn(B, T, E, generator=g)
    kpm = torch.rand(B, T, generator=g) > 0.7
    kpm[:, 0] = False
    with torch.no_grad():
        check(layer(x, x, x), m(x, x, x), 2e-5, 1e-4, "no mask")
        check(layer(x, x, x, key_padding_mask=kpm), m(x, x, x, key_padding_mask=kpm), 2e-5, 1e-4, "padding")


@pytest.mark.parametrize("retroactive", [False, True])
@pytest.mark.parametrize("seed", SEEDS[:4])
def test_continual(retroactive, seed):
    co = require("continual")
    g = torch.Generator().manual_seed(seed + 10 * retroactive)
    H = int(torch.randint(1, 4, (1,), generator=g))
    E = H * int(torch.randint(1, 6, (1,), generator=g))
    # Upstream Retroactive crashes at sequence_len = 1 (continual SPEC section 5); SingleOutput takes it.
    L = int(torch.randint(1 + retroactive, 8, (1,), generator=g))
    N = int(torch.randint(1, 4, (1,), generator=g))
    batch_first = bool(seed % 2)
    kwargs = dict(sequence_len=L, batch_first=batch_first, forward_returns_attn_mask=seed != 3)
    if retroactive:
        m = co.RetroactiveMultiheadAttention(E, H, **kwargs)
    else:
        m = co.SingleOutputMultiheadAttention(E, H, query_index=int(torch.randint(-L, L, (1,), generator=g)),
                                              **kwargs)
    m = randomize(m, seed=seed)
    layer = tokenmix.from_torch(m)
    shape = (N, L, E) if batch_first else (L, N, E)
    x = torch.randn(*shape, generator=g)
    stream = torch.randn(*((N, L + 5, E) if batch_first else (L + 5, N, E)), generator=g)
    tol = (2e-5, 1e-5) if retroactive else (1e-5, 1e-5)
    with torch.no_grad():
        check(layer(x), m(x), *tol, what="forward")
        check(layer.forward_steps(stream), m.forward_steps(stream), *tol, what="forward_steps")
        token = (stream[:, 0] if batch_first else stream[0]).contiguous()
        check(layer.forward_step(token, update_state=False), m.forward_step(token, update_state=False), *tol,
              what="peek step")
        check(layer.forward_step(token), m.forward_step(token), *tol, what="step")
        layer.clean_state()
        m.clean_state()
        check(layer.forward_step(token), m.forward_step(token), *tol, what="step after clean_state")


def test_accelerate_a_model_with_several_families():
    attention = require("espnet2.asr.state_spaces.attention")
    fastformer = require("espnet2.asr.layers.fastformer")
    hm = require("speechbrain.lobes.models.transformer.hypermixing")
    import tokenmix.torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = attention.MultiHeadedAttention(32, 4)
            self.ff = fastformer.FastSelfAttention(32, 2, 0.0)
            self.mix = hm.HyperMixing(32, 64, num_heads=2, max_length=40)
            self.proj = torch.nn.Linear(32, 32)

        def forward(self, x, mask):
            y, _ = self.mha(x, None, mask)
            y = self.ff(y + x, mask)
            y, _ = self.mix(y, y, y, key_padding_mask=~mask[:, 0])
            return self.proj(y)

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("a", Block())
    model.add_module("b", Block())
    model = randomize(model, 0.2)

    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, mask):
            for block in self.inner:
                x = block(x, mask)
            return x

    model = Wrap(model).eval()
    x = torch.randn(3, 17, 32)
    mask = torch.ones(3, 1, 17, dtype=torch.bool)
    mask[1, :, 12:] = False
    with torch.no_grad():
        expected = model(x, mask)
        replaced = tokenmix.torch.accelerate(model)
        actual = model(x, mask)
    assert sorted(replaced) == sorted(f"inner.{b}.{n}" for b in "ab" for n in ("mha", "ff", "mix"))
    assert isinstance(model.inner.a.mha, tokenmix.torch.TokenmixModule)
    assert_close(actual, expected, 1e-4, 1e-4, "accelerated model")
    assert tokenmix.torch.accelerate(model) == {}  # nothing left to replace
    model.train()
    with pytest.raises(RuntimeError, match="training mode"):
        model(x, mask)
    with pytest.raises(ValueError, match="training mode"):
        tokenmix.torch.accelerate(model)
    model.eval()
    with pytest.raises(RuntimeError, match="requires gradients"):
        model(x.requires_grad_(), mask)


def test_unsupported_module_is_a_value_error():
    with pytest.raises(ValueError, match="unsupported class 'torch.nn.modules.linear.Linear'"):
        tokenmix.from_torch(torch.nn.Linear(4, 4))


def test_numpy_in_numpy_out_and_no_copy_of_inputs():
    attention = require("espnet2.asr.state_spaces.attention")
    m = randomize(attention.MultiHeadedAttention(16, 2))
    layer = tokenmix.from_torch(m)
    x = np.random.default_rng(0).standard_normal((2, 5, 16), dtype=np.float32)
    y, none = layer(x)
    assert isinstance(y, np.ndarray) and none is None
    with torch.no_grad():
        assert_close(y, m(torch.from_numpy(x))[0], 1e-5, 1e-5, "numpy call")
    # The layer is a snapshot: changing the module afterwards does not change it.
    with torch.no_grad():
        m.linear_q.weight.add_(1.0)
    np.testing.assert_array_equal(layer(x)[0], y)


def test_accelerate_upstream_encoders():
    """Whole upstream encoders: SpeechBrain's HyperConformer and ESPnet's Branchformer with Fastformer
    (which dispatches on isinstance(attn, FastSelfAttention): the replacement must pass it)."""
    asr_module = require("speechbrain.lobes.models.transformer.TransformerASR")
    branchformer = require("espnet2.asr.encoder.branchformer_encoder")
    fastformer = require("espnet2.asr.layers.fastformer")
    import tokenmix.torch

    torch.manual_seed(0)
    x = torch.randn(2, 30, 20)
    asr = asr_module.TransformerASR(input_size=20, tgt_vocab=10, d_model=32, nhead=2, num_encoder_layers=2,
                                    num_decoder_layers=0, d_ffn=64, attention_type="hypermixing",
                                    encoder_module="conformer", normalize_before=True).eval()
    enc = branchformer.BranchformerEncoder(20, output_size=32, attention_heads=2, attention_layer_type="fast_selfattn",
                                           num_blocks=2, input_layer="linear", pos_enc_layer_type="abs_pos",
                                           rel_pos_type="latest", cgmlp_linear_units=64).eval()
    lengths = torch.tensor([30, 21])
    with torch.no_grad():
        expected = asr.encode(x), enc(x, lengths)[0]
        replaced = tokenmix.torch.accelerate(asr), tokenmix.torch.accelerate(enc)
        actual = asr.encode(x), enc(x, lengths)[0]
    assert [len(r) for r in replaced] == [2, 2]
    assert all(isinstance(m.attn, fastformer.FastSelfAttention) for m in enc.encoders)
    for a, e in zip(actual, expected):
        assert_close(a, e, 1e-4, 1e-4, "accelerated encoder")


def _bf16_supported():
    try:
        tokenmix.load(REFERENCE_DIR / "espnet_mha/espnet_mha_self_nomask_E32_H4_B3_T5.safetensors", precision="bf16")
        return True
    except ValueError as e:
        assert "no AVX512-BF16 or AMX-BF16" in str(e)
        return False


def test_precision_bf16_against_the_upstream_modules():
    """from_torch(m, precision=...) and accelerate(model, precision=...): bf16 within the parity gate
    (1e-2 of the output's scale) of the upstream fp32 module, and reported; auto keeps bf16 only for
    weights that pass the gate; a bad precision is a ValueError. Weights at the scale of upstream's
    initialisation (N(0, 1/E)); at 4x that, attention logits reach tens and bf16 fails the gate."""
    attention = require("espnet2.asr.state_spaces.attention")
    fastformer = require("espnet2.asr.layers.fastformer")
    import tokenmix.torch

    torch.manual_seed(1)
    m = randomize(attention.MultiHeadedAttention(64, 4), scale=0.125).eval()
    x = torch.randn(2, 23, 64)
    with torch.no_grad():
        want = m(x, None, None)[0].numpy()
    auto = tokenmix.from_torch(m, precision="auto")
    assert auto.precision in ("fp32", "bf16") and auto.gemm.startswith(("onednn ", "openblas "))
    assert tokenmix.from_torch(m).precision == "fp32"
    with pytest.raises(ValueError, match="precision: expected fp32, bf16, int8 or auto, got 'fp8'"):
        tokenmix.from_torch(m, precision="fp8")
    if not _bf16_supported():
        pytest.skip("this CPU has no bf16 arithmetic (tests/precision_test.cpp covers the refusal)")
    layer = tokenmix.from_torch(m, precision="bf16")
    assert layer.precision == "bf16" and "bf16" in layer.gemm
    got = layer(x.numpy())[0]
    scale = np.abs(want).max()
    err = np.abs(got - want).max() / scale
    assert 1e-6 < err <= 1e-2, f"bf16 error {err:.2e} of the output scale"  # rounded, yet within the gate
    assert pickle.loads(pickle.dumps(layer)).precision == "bf16"
    sharp = randomize(attention.MultiHeadedAttention(64, 4), scale=0.5)
    with torch.no_grad():
        want = sharp(x, None, None)[0].numpy()
    assert np.abs(tokenmix.from_torch(sharp, precision="bf16")(x)[0].numpy() - want).max() > 1e-2 * np.abs(want).max()
    if auto.precision == "bf16":  # auto chose bf16 for this CPU: it must refuse it for these weights
        assert tokenmix.from_torch(sharp, precision="auto").precision == "fp32"

    ff = randomize(fastformer.FastSelfAttention(64, 4, 0.0), scale=0.125).eval()
    model = torch.nn.Sequential()
    model.add_module("ff", ff)
    model.eval()
    mask = torch.ones(2, 1, 23, dtype=torch.bool)
    with torch.no_grad():
        want = ff(x, mask).numpy()
        tokenmix.torch.accelerate(model, precision="bf16")
        got = model.ff(x, mask).numpy()
    assert isinstance(model.ff, tokenmix.torch.TokenmixModule)
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()
