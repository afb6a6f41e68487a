"""Randomized differential testing of tokenmix against the live upstream modules, decided by a float64 oracle.

Each case draws one configuration at the edges of a family's domain (E not a power of two, head_dim
1-3, H = 1 and H = E, T = 1, 2 and odd, B 1-4, fully masked rows and fully padded sequences, memory
length 1, kdim/vdim, bias off, tied / fix_tm_hidden_size / max_length == T, query_index of both signs,
sequence_len 1-9, every layout and Primer-EZ variant, ESPnet step() with memory and prefix, streams in
random chunks, and weights scaled x8), builds the upstream module with random weights, and runs one
call twice: on the upstream module and on ``tokenmix.from_torch(module)`` with the very same arguments
(the layers mirror the upstream signatures). A third run of the upstream module in float64 is the
oracle. Per output:

* ``pass``: tokenmix equals upstream's float32 output within the family SPEC tolerance (atol taken
  relative to the output's largest magnitude, so random weights of any scale are judged alike);
* ``within-noise``: it does not, but tokenmix is no further from the float64 answer than
  ``NOISE_FACTOR`` times upstream's own float32 output (x4 more with x8 weights, whose rounding errors
  are amplified by softmax / LayerNorm): both are float32 approximations and tokenmix is as good.
  Upstream's error is its largest over this case and ``NOISE_TRIALS`` copies of the inputs perturbed
  by about one ulp (computed only when the single run does not suffice): on ill-conditioned cases one
  run can be far luckier than the problem's rounding noise;
* ``upstream-fails``: upstream raises or returns NaN/inf (retroactive overflow, sequence_len = 1,
  fully masked labml rows); tokenmix must then return finite values or raise ValueError (its
  documented behaviour), anything else is a ``parity`` miss;
* ``parity``: a miss; ``error``: tokenmix raised where upstream did not; ``crash``: the process died
  (found by the driver, which runs each family in a subprocess).

Run ``python differential.py --n 2000 --seed 7 --out DIR`` (``make differential N=... SEED=...``):
prints a table per family and writes every miss as a reference case file into DIR (replayable with
``tokenmix run``). The pytest suite runs a fixed-seed subset (test_differential.py).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import traceback

import numpy as np
import torch

import tokenmix
from tokenmix import _core

NOISE_FACTOR = 4.0
X8_FACTOR = 4.0  # extra factor for cases with weights scaled x8
OUTCOMES = ("pass", "within-noise", "upstream-fails", "parity", "error", "crash")
TOLERANCE = {"espnet_mha": (1e-5, 1e-5), "continual": (2e-5, 1e-5), "hypermixing": (2e-5, 1e-4),
             "primer_ez": (1e-5, 1e-5), "fastformer": (1e-5, 1e-5)}


class Case:
    """One drawn configuration: the module, its inputs, and run(f, inputs) -> {out name: tensor}, which
    calls f (the upstream module or the tokenmix layer) with the upstream signature."""

    def __init__(self, family, module, inputs, run, call=None, x8=False, what="", oracle=None):
        self.family, self.module, self.inputs, self.run = family, module, inputs, run
        self.call, self.x8, self.what = call, x8, what
        # oracle(module64, inputs64) -> the float64 answer; run itself unless a call's upstream
        # algorithm is unstable even in float64 (see gen_continual).
        self.oracle = oracle or run


def _randomize(module, g, x8):
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (8.0 if x8 else 1.0) / max(1.0, fan_in) ** 0.5)
    return module.eval()


def _pick(g, values):
    return values[int(torch.randint(len(values), (1,), generator=g))]


def _int(g, lo, hi):
    """Uniform in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _heads_dims(g, max_heads=8):
    """(H, E): head_dim 1-3 often, H = 1 and H = E at the edges, E rarely a power of two."""
    H = _pick(g, [1, 1, 2, 3, _int(g, 1, max_heads)])
    D = _pick(g, [1, 2, 3, _int(g, 1, 12)])
    return H, H * D


def _time(g, hi=12):
    return _pick(g, [1, 2, 2 * _int(g, 1, hi // 2) + 1, _int(g, 1, hi)])


def _chunks(g, T):
    cuts, t = [], 0
    while t < T:
        c = _int(g, 1, 4)
        cuts.append((t, min(T, t + c)))
        t += c
    return cuts


def _stream_or_forward(g, T, forward_on_full):
    """run for a causal stream: tokenmix pushes random chunks, upstream runs the causal forward."""
    cuts = _chunks(g, T)

    def run(f, x):
        if isinstance(f, tokenmix.Layer):
            s = f.stream(x["B"])
            return {"out.y": torch.cat([s.push(x["in.x"][:, a:b].contiguous()) for a, b in cuts], dim=1)}
        return {"out.y": forward_on_full(f, x)}

    return run


def _window_stream(g, B, T, name, out, forward_window):
    """(run, L, P) for a sliding-window stream of L tokens emitting position P: tokenmix pushes
    inputs[name] in random chunks; upstream runs forward_window(f, window) -> (B, L, E) on every
    window and keeps row P."""
    L = _int(g, 1, T)
    P = _int(g, -1, L - 1)
    cuts = _chunks(g, T)

    def run(f, inp):
        x = inp[name]
        if isinstance(f, tokenmix.Layer):
            s = f.stream(B, window=L, position=P)
            return {out: torch.cat([s.push(x[:, a:b].contiguous()) for a, b in cuts], dim=1)}
        return {out: torch.stack([forward_window(f, x[:, s: s + L])[:, P] for s in range(T - L + 1)], 1)}

    return run, L, P


def gen_espnet(g):
    from espnet2.asr.state_spaces.attention import MultiHeadedAttention

    H, E = _heads_dims(g)
    B, T1 = _int(g, 1, 4), _time(g)
    x8 = _int(g, 0, 9) == 0
    m = _randomize(MultiHeadedAttention(E, H), g, x8)
    mode = _pick(g, ["self", "cross", "cross", "2d", "step_memory", "step_prefix", "stream"])
    q = torch.randn(B, T1, E, generator=g)
    T2 = _pick(g, [1, _time(g)]) if mode in ("cross", "step_memory") else T1
    mem = torch.randn(B, T2, E, generator=g)
    kind = _pick(g, ["none", "pad", "rows", "causal"] if mode == "self" else ["none", "pad", "rows"])
    mask = None
    if kind == "pad":
        mask = torch.rand(B, 1, T2, generator=g) > 0.3
        if _int(g, 0, 3) == 0:
            mask[_int(g, 0, B - 1)] = False  # a fully padded sequence
    elif kind == "rows":
        mask = torch.rand(B, T1, T2, generator=g) > 0.4
        if _int(g, 0, 2) == 0:
            mask[:, _int(g, 0, T1 - 1)] = False  # a fully masked query row
    elif kind == "causal":
        mask = torch.tril(torch.ones(T1, T1, dtype=torch.bool)).expand(B, T1, T1).contiguous()
    inputs = {"in.query": q, "B": B}
    what = f"E={E} H={H} B={B} T1={T1} {mode} mask={kind}"
    null = None
    if mode in ("self", "cross"):
        if mode == "cross":
            inputs["in.memory"] = mem
        if mask is not None:
            inputs["in.mask"] = mask
        call = {"method": "forward", "args": {"query": "in.query", "memory": "in.memory" if mode == "cross" else null,
                                              "mask": "in.mask" if mask is not None else null},
                "returns": ["out.y", null]}
        return Case("espnet_mha", m, inputs,
                    lambda f, x: {"out.y": f(x["in.query"], x.get("in.memory"), x.get("in.mask"))[0]}, call, x8, what)
    if mode == "2d":
        inputs["in.query"] = q[:, 0].contiguous()
        return Case("espnet_mha", m, inputs, lambda f, x: {"out.y": f(x["in.query"])[0]},
                    {"method": "forward", "args": {"query": "in.query", "memory": null, "mask": null},
                     "returns": ["out.y", null]}, x8, what)
    if mode == "step_memory":
        inputs.update({"in.query": q[:, 0].contiguous(), "in.memory": mem})
        if kind == "pad":
            inputs["in.mask"] = mask
        call = [{"method": "step", "args": {"query": "in.query", "state": null, "memory": "in.memory",
                                            "mask": "in.mask" if kind == "pad" else null},
                 "returns": ["out.steps[0]", null]}]
        return Case("espnet_mha", m, inputs, lambda f, x: {
            "out.steps": f.step(x["in.query"], None, x["in.memory"], x.get("in.mask"))[0].unsqueeze(0)}, call, x8, what)
    if mode == "step_prefix":  # decode by re-attending the prefix, as ESPnet's S4 decoder may

        def run(f, x):
            steps = [f.step(x["in.query"][:, t].contiguous(), None, x["in.query"][:, : t + 1].contiguous())[0]
                     for t in range(x["in.query"].shape[1])]
            return {"out.steps": torch.stack(steps)}

        return Case("espnet_mha", m, inputs, run, None, x8, what)
    inputs["in.x"] = q
    return Case("espnet_mha", m, inputs, _stream_or_forward(
        g, T1, lambda f, x: f(x["in.x"], None, torch.tril(torch.ones(T1, T1, dtype=torch.bool)).expand(
            x["B"], T1, T1).contiguous())[0]), None, x8, what)


def gen_fastformer(g):
    from espnet2.asr.layers.fastformer import FastSelfAttention

    H, E = _heads_dims(g)
    B, T = _int(g, 1, 4), _time(g, 16)
    x8 = _int(g, 0, 9) == 0
    m = _randomize(FastSelfAttention(E, H, 0.0), g, x8)
    x = torch.randn(B, T, E, generator=g)
    if _int(g, 0, 3) == 0:  # sliding-window stream vs upstream forward on every window
        run, L, P = _window_stream(g, B, T, "in.xs_pad", "out.y", lambda f, w: f(w, None))
        return Case("fastformer", m, {"in.xs_pad": x}, run, None, x8, f"E={E} H={H} B={B} T={T} window={L} P={P}")
    mask = None
    if _int(g, 0, 1):
        mask = torch.rand(B, 1, T, generator=g) > 0.3
        if _int(g, 0, 3) == 0:
            mask[_int(g, 0, B - 1)] = False
    inputs = {"in.xs_pad": x}
    if mask is not None:
        inputs["in.mask"] = mask
    call = {"method": "forward", "args": {"xs_pad": "in.xs_pad", "mask": "in.mask" if mask is not None else None},
            "returns": ["out.y"]}
    return Case("fastformer", m, inputs, lambda f, inp: {"out.y": f(inp["in.xs_pad"], inp.get("in.mask"))}, call,
                x8, f"E={E} H={H} B={B} T={T} mask={mask is not None}")


def gen_hypermixing(g):
    from speechbrain.lobes.models.transformer.hypermixing import HyperMixing

    H = _pick(g, [1, 1, 2, _int(g, 1, 4)])
    E = 2 * H * _pick(g, [1, _int(g, 1, 8)])
    K = H * _pick(g, [1, 1, 2, _int(g, 1, 8)])
    tied, fix = bool(_int(g, 0, 1)), bool(_int(g, 0, 1))
    B, T = _int(g, 1, 4), _time(g, 16)
    max_length = _pick(g, [T, T + _int(g, 0, 8)])
    x8 = _int(g, 0, 9) == 0
    m = _randomize(HyperMixing(E, K, tied=tied, num_heads=H, fix_tm_hidden_size=fix, max_length=max_length), g, x8)
    x = torch.randn(B, T, E, generator=g)
    what = f"E={E} H={H} K={K} tied={tied} fix={fix} B={B} T={T} max_length={max_length}"
    if _int(g, 0, 3) == 0:  # sliding-window stream vs upstream forward on every window
        run, L, P = _window_stream(g, B, T, "in.x", "out.output", lambda f, w: f(w, w, w)[0])
        return Case("hypermixing", m, {"in.x": x}, run, None, x8, what + f" window={L} P={P}")
    kpm = None
    if _int(g, 0, 1):
        kpm = torch.rand(B, T, generator=g) > 0.7
        if _int(g, 0, 3) == 0:
            kpm[_int(g, 0, B - 1)] = True  # a fully padded sequence
    inputs = {"in.x": x}
    args = {"query": "in.x", "key": "in.x", "value": "in.x"}
    if kpm is not None:
        inputs["in.kpm"] = kpm
        args["key_padding_mask"] = "in.kpm"
    return Case("hypermixing", m, inputs, lambda f, inp: dict(zip(
        ("out.output", "out.attn_weights"), f(inp["in.x"], inp["in.x"], inp["in.x"], key_padding_mask=inp.get("in.kpm")))),
        {"method": "forward", "args": args, "returns": ["out.output", "out.attn_weights"]}, x8,
        what + f" kpm={kpm is not None}")


def gen_labml(g):
    import labml_nn.transformers.mha as mha
    import labml_nn.transformers.primer_ez as primer
    import labml_nn.transformers.primer_ez.efficient as efficient
    import labml_nn.transformers.primer_ez.variations as variations

    cls = _pick(g, [mha.MultiHeadAttention, primer.MultiDConvHeadAttention,
                    variations.MultiDSharedConvHeadAttention, variations.MultiDPHConvHeadAttention,
                    efficient.MultiDConvHeadAttention])
    H, E = _heads_dims(g, 6)
    S, B = _time(g, 10), _int(g, 1, 4)
    x8 = _int(g, 0, 9) == 0
    kwargs = {"bias": bool(_int(g, 0, 1))} if cls is mha.MultiHeadAttention else {}
    m = _randomize(cls(H, E, **kwargs), g, x8)
    what = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__} E={E} H={H} S={S} B={B} {kwargs}"
    mode = _pick(g, ["self", "self", "cross", "stream"])
    Sk = _time(g, 10) if mode == "cross" else S
    q = torch.randn(S, B, E, generator=g)
    kv = torch.randn(Sk, B, E, generator=g) if mode == "cross" else q
    if mode == "stream":
        causal = torch.tril(torch.ones(S, S, dtype=torch.bool)).unsqueeze(-1)
        cuts = _chunks(g, S)

        def run(f, inp):  # tokenmix streams are batch-first (B, C, E); labml is sequence-first
            if isinstance(f, tokenmix.Layer):
                s = f.stream(B)
                xb = inp["in.x"].transpose(0, 1)
                return {"out.y": torch.cat([s.push(xb[:, a:b].contiguous()) for a, b in cuts], 1).transpose(0, 1)}
            x = inp["in.x"]
            return {"out.y": f(query=x, key=x, value=x, mask=causal)}

        return Case("primer_ez", m, {"in.x": q}, run, None, x8, what + " stream")
    kind = _pick(g, ["none", "causal", "random"] if mode == "self" else ["none", "random"])
    mask = None
    if kind == "causal":
        mask = torch.tril(torch.ones(S, S, dtype=torch.bool)).unsqueeze(-1)
    elif kind == "random":
        mask = torch.rand(_pick(g, [1, S]), Sk, _pick(g, [1, B]), generator=g) > 0.3
        if _int(g, 0, 3) == 0:
            mask[0, :, 0] = False  # a fully masked row (upstream NaN, tokenmix 0: documented)
    inputs = {"in.query": q, "in.key": kv, "in.value": kv}
    if mask is not None:
        inputs["in.mask"] = mask
    call = {"method": "forward", "args": {"query": "in.query", "key": "in.key", "value": "in.value",
                                          "mask": "in.mask" if mask is not None else None}, "returns": "out.y"}
    return Case("primer_ez", m, inputs, lambda f, x: {"out.y": f(query=x["in.query"], key=x["in.key"],
                                                                 value=x["in.value"], mask=x.get("in.mask"))},
                call, x8, what + f" {mode} mask={kind}")


def gen_continual(g):
    import continual as co

    retro = bool(_int(g, 0, 1))
    H, E = _heads_dims(g, 4)
    L, N = _int(g, 1, 9), _int(g, 1, 3)
    layout = _pick(g, ["batch_first", "seq_first", "embed_dim_second"])
    kwargs = dict(sequence_len=L, batch_first=layout != "seq_first", embed_dim_second=layout == "embed_dim_second",
                  bias=bool(_int(g, 0, 3)), forward_returns_attn_mask=bool(_int(g, 0, 3)))
    mode = _pick(g, ["forward", "steps", "steps"])
    if mode == "forward" and _int(g, 0, 2) == 0:
        kwargs.update(_pick(g, [{"kdim": _int(g, 1, 9), "vdim": _int(g, 1, 9)}, {"add_bias_kv": True},
                                {"add_zero_attn": True}]))
    if retro:
        m = co.RetroactiveMultiheadAttention(E, H, **kwargs)
    else:
        m = co.SingleOutputMultiheadAttention(E, H, query_index=_int(g, -L, L - 1),
                                              single_output_forward=bool(_int(g, 0, 3)), **kwargs)
    x8 = _int(g, 0, 9) == 0
    m = _randomize(m, g, x8)
    what = f"{type(m).__name__} E={E} H={H} L={L} N={N} {layout} {mode} " + \
        json.dumps({k: v for k, v in kwargs.items() if k not in ("sequence_len",)})

    def layout_of(T, width=E):
        return {"batch_first": (N, T, width), "seq_first": (T, N, width), "embed_dim_second": (N, width, T)}[layout]

    if mode == "forward":
        q = torch.randn(*layout_of(L), generator=g)
        inputs = {"in.x": q}
        if "kdim" in kwargs:
            inputs["in.k"] = torch.randn(*layout_of(L, kwargs["kdim"]), generator=g)
            inputs["in.v"] = torch.randn(*layout_of(L, kwargs["vdim"]), generator=g)

        def run(f, x):
            out = f(x["in.x"], x.get("in.k"), x.get("in.v"))
            return {"out.o": out[0] if isinstance(out, tuple) else out}

        return Case("continual", m, inputs, run, None, x8, what)
    T = L + _int(g, 0, 6)
    x = torch.randn(*layout_of(T), generator=g)
    time_axis = {"batch_first": 1, "seq_first": 0, "embed_dim_second": 2}[layout]

    def run(f, inp):
        xs = inp["in.x"]
        out = {}
        ys = f.forward_steps(xs)
        if ys is not None:
            out["out.steps"] = ys
        token = xs.select(time_axis, T - 1).contiguous()
        peek = f.forward_step(token, update_state=False)
        if peek is not None:
            out["out.peek"] = peek
        f.clean_state()
        return out

    def window_oracle(f, inp):
        """Retroactive steps from clip-wise forward() on each window (the SPEC's step/forward
        equivalence): upstream's step algorithm adds and subtracts unnormalised exponentials, which
        cancels catastrophically even in float64 once scores are large; forward() is a stable softmax."""
        xs = inp["in.x"]

        def full(window):
            out = f(window)
            return out[0] if isinstance(out, tuple) else out

        steps = [full(xs.narrow(time_axis, t - L + 1, L)) for t in range(L - 1, T)]
        out = {"out.steps": torch.stack(steps, dim=time_axis)}
        last = xs.select(time_axis, T - 1).unsqueeze(time_axis)
        peek_window = torch.cat([xs.narrow(time_axis, T - L + 1, L - 1), last], dim=time_axis) if L > 1 else last
        out["out.peek"] = full(peek_window)
        return out

    return Case("continual", m, {"in.x": x}, run, None, x8, what, window_oracle if retro else None)


GENERATORS = {"espnet_mha": gen_espnet, "continual": gen_continual, "hypermixing": gen_hypermixing,
              "primer_ez": gen_labml, "fastformer": gen_fastformer}


def _as_float64(x):
    return {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in x.items()}


def _finite(outs):
    return all(torch.isfinite(v).all() for v in outs.values())


def _upstream(fn, module, inputs):
    """fn(module, inputs) with gradients enabled, outputs detached: this keeps torch 1.13 off its
    fused inference path for nn.MultiheadAttention, which crashes with bias=False (qkv_bias None);
    the math is the module's own either way."""
    with torch.enable_grad():
        return {k: v.detach() for k, v in fn(module, inputs).items()}


NOISE_TRIALS = 4  # ulp-perturbed upstream runs that estimate the float32 noise floor (judge)


def _perturbed(inputs, g):
    """The float inputs multiplied by 1 + u, |u| <= 2^-23 (about one float32 ulp), masks unchanged."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = (v.double() * (1 + (torch.rand(v.shape, generator=g, dtype=torch.float64) - 0.5) * 2 ** -22)).float()
        out[k] = v
    return out


def _noise_floor(case, module64, name, up_err):
    """The largest distance from its float64 answer that upstream's float32 output shows on this case
    and on NOISE_TRIALS copies of its inputs perturbed by about one ulp: on ill-conditioned cases (a
    LayerNorm over two channels, softmax on x8 logits) a single run can be far luckier than the
    rounding noise the problem has."""
    g = torch.Generator().manual_seed(0)
    floor = up_err
    for _ in range(NOISE_TRIALS):
        x = _perturbed(case.inputs, g)
        try:
            u = _upstream(case.run, case.module, x)[name].double()
            r = _upstream(case.oracle, module64, _as_float64(x))[name]
        except Exception:  # noqa: BLE001 - a perturbed run that fails estimates nothing
            continue
        ok = torch.isfinite(u)
        if ok.any():
            floor = max(floor, float((u[ok] - r[ok]).abs().max()))
    return floor


def judge(case):
    """(outcome, detail) of one case."""
    atol, rtol = TOLERANCE[case.family]
    module64 = copy.deepcopy(case.module).double()  # before any call leaves graph tensors on the module
    try:
        up = _upstream(case.run, case.module, case.inputs)
    except Exception:  # noqa: BLE001 - any upstream failure is the upstream-fails outcome
        up = None
    with torch.no_grad():
        try:
            layer = tokenmix.from_torch(case.module)
            mine = case.run(layer, case.inputs)
        except ValueError as e:
            return ("upstream-fails", f"tokenmix ValueError: {e}") if up is None else ("error", str(e))
    if up is None:
        finite = _finite(mine)
        return ("upstream-fails" if finite else "parity"), "tokenmix finite" if finite else "tokenmix non-finite"
    ref = _upstream(case.oracle, module64, _as_float64(case.inputs))
    # Where upstream overflows (NaN/inf), tokenmix must stay finite; elsewhere the usual rule holds
    # (upstream's finite values next to an overflow may be inaccurate: the float64 oracle decides).
    worst = ("pass", "") if _finite(up) else ("upstream-fails", "upstream NaN/inf; tokenmix finite, equal elsewhere")
    if not _finite(mine):
        return "parity", "tokenmix returned NaN/inf"
    for name, u in up.items():
        y = mine.get(name)
        if y is None or tuple(y.shape) != tuple(u.shape):
            return "parity", f"{name}: shape {None if y is None else tuple(y.shape)} vs upstream {tuple(u.shape)}"
        ok = torch.isfinite(u)
        u64, y64, r = u.double()[ok], y.double()[ok], ref[name][ok]
        scale = max(1.0, float(r.abs().max())) if r.numel() else 1.0
        if bool(((y64 - u64).abs() <= atol * scale + rtol * u64.abs()).all()):
            continue
        mine_err, up_err = float((y64 - r).abs().max()), float((u64 - r).abs().max())
        factor = NOISE_FACTOR * (X8_FACTOR if case.x8 else 1.0)
        floor = up_err if mine_err <= factor * max(up_err, 1e-7 * scale) else _noise_floor(case, module64, name, up_err)
        detail = f"{name}: |tokenmix-f64| {mine_err:.3g}, |upstream-f64| {up_err:.3g} (noise floor {floor:.3g})"
        if mine_err <= factor * max(floor, 1e-7 * scale):
            worst = worst if worst[0] == "upstream-fails" else ("within-noise", detail)
        else:
            return "parity", detail
    return worst


def write_case(case, path):
    """The case as a reference case file (param.*, in.*, out.* = upstream float32, metadata)."""
    from tokenmix._registry import describe

    name, config, weights = describe(case.module)
    tensors = {"param." + k: np.ascontiguousarray(v) for k, v in weights.items()}
    for k, v in case.inputs.items():
        if isinstance(v, torch.Tensor):
            tensors[k] = np.ascontiguousarray(v.numpy())
    try:
        for k, v in _upstream(case.run, case.module, case.inputs).items():
            tensors[k] = np.ascontiguousarray(v.float().numpy())
    except Exception:  # noqa: BLE001 - upstream failed: the case then holds no expectation
        pass
    metadata = {"module": name, "config": json.dumps(config), "what": case.what}
    if case.call is not None:
        metadata["call"] = json.dumps(case.call)
    _core.write_safetensors(str(path), tensors, metadata)


def run_family(family, n, seed, out_dir=None, progress=None):
    """Counts of each outcome over n cases of a family; misses are written to out_dir."""
    counts = dict.fromkeys(OUTCOMES, 0)
    misses = []
    for i in range(n):
        case_seed = seed * 1_000_003 + i
        if progress:
            with open(progress, "w") as f:
                f.write(str(case_seed))
        case = GENERATORS[family](torch.Generator().manual_seed(case_seed))
        outcome, detail = judge(case)
        counts[outcome] += 1
        if outcome in ("parity", "error"):
            misses.append(f"{family} seed {case_seed}: {outcome}: {case.what}: {detail}")
            if out_dir:
                write_case(case, os.path.join(out_dir, f"{family}_seed{case_seed}.safetensors"))
    return counts, misses


def main(argv=None):
    p = argparse.ArgumentParser(description="tokenmix vs the upstream modules on random configurations")
    p.add_argument("--n", type=int, default=2000, help="cases per family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default=",".join(GENERATORS))
    p.add_argument("--out", default="build/differential", help="directory for the failing cases")
    p.add_argument("--family-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    if a.family_worker:
        counts, misses = run_family(a.family_worker, a.n, a.seed, a.out, os.path.join(a.out, a.family_worker + ".at"))
        print(json.dumps({"counts": counts, "misses": misses}))
        return 0
    total = dict.fromkeys(OUTCOMES, 0)
    print(f"{'family':<12}" + "".join(f"{o:>15}" for o in OUTCOMES))
    all_misses = []
    for family in a.families.split(","):
        proc = subprocess.run([sys.executable, __file__, "--n", str(a.n), "--seed", str(a.seed), "--out", a.out,
                               "--family-worker", family], capture_output=True, text=True)
        if proc.returncode == 0:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            counts, misses = result["counts"], result["misses"]
        else:  # the worker died: one crash at the case it was on
            at = open(os.path.join(a.out, family + ".at")).read()
            counts = dict.fromkeys(OUTCOMES, 0)
            counts["crash"] = 1
            misses = [f"{family} seed {at}: crash (exit {proc.returncode}): {proc.stderr[-2000:]}"]
        for o in OUTCOMES:
            total[o] += counts[o]
        all_misses += misses
        print(f"{family:<12}" + "".join(f"{counts[o]:>15}" for o in OUTCOMES), flush=True)
    print(f"{'total':<12}" + "".join(f"{total[o]:>15}" for o in OUTCOMES))
    for m in all_misses:
        print(m)
    if all_misses:
        print(f"{len(all_misses)} miss(es); their cases are in {a.out}")
    return 1 if all_misses else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(2)
