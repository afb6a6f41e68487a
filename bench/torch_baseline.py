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
  stream   one new token with `ctx` tokens of history (window W = ctx + 1), done the way a PyTorch
           user of the upstream module can: its own step where one exists, else forward again over
           what the token needs. Per layer:
             espnet_mha       step() with the whole prefix as memory (re-projects the prefix each step)
             hypermixing      forward over the last W tokens, newest row (no step; bidirectional pooling)
             fastformer       forward over the last W tokens, newest row (no step; global pooling)
             labml_mha        forward(query = newest token, key = value = the W-token prefix)
             primer_ez        same with the last 3 queries (the causal query conv needs them)
             continual_so     upstream forward_step (cached K/V of the window, sequence_len = W)
             continual_retro  upstream forward_step (running d/AV, out_proj of all W rows)
           continual_so has no offline measurement (its forward() computes a single query).

Adding a layer: write a Baseline subclass (make / check / offline_fn / stream_fn / flops) named like
the C++ registry entry and add it to BASELINES. check() replays every reference case of the family
(tests/data/reference/<family>/). flops must match the C++ registry's count
(tools/cli/bench_families.cpp) so the GFLOP/s columns compare like for like.
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

    def make(self, E, H, T):
        """A module of width E with H heads, random weights (init_random, eval mode), able to run the
        shape's length T (offline: T tokens; stream: T tokens of history + the new one)."""
        raise NotImplementedError

    def check(self):
        """Replays every reference case; returns (cases, max_abs_err) or raises AssertionError."""
        raise NotImplementedError

    def offline_fn(self, module, B, T, E):
        """A no-argument callable running one forward of a (B, T, E) input; None when the family is
        not measured offline."""
        raise NotImplementedError

    def stream_fn(self, module, B, ctx, E):
        """A callable producing the output for one new token after ctx tokens, as upstream would;
        None when the layer has no step."""
        return None

    def flops(self, mode, B, T, E, H):
        """Same count as the C++ registry entry."""
        raise NotImplementedError

    def replay_forward_cases(self, run, atol, rtol):
        """check() for families whose cases are one forward call: builds module_class()(**config),
        loads param.*, and compares run(module, tensors, call args, path) -> {out name: tensor}."""
        import torch
        worst, n = 0.0, 0
        for path in case_files(self.name):
            t, meta = read_case(path)
            m = self.module_class()(**json.loads(meta["config"])).eval()
            load_params(m, t)
            with torch.no_grad():
                outs = run(m, t, json.loads(meta["call"])["args"], path)
            worst = max(worst, check_outputs(path, outs, t, atol, rtol))
            n += 1
        return n, worst


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

    def make(self, E, H, T):
        return init_random(self.module_class()(E, H))

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


def init_random(module, seed=1234):
    """Seeded random weights, the C++ registry's distribution: 2-D weights N(0, 1/fan_in), every other
    parameter N(0, 0.3²) (buffers such as a positional table are left as built)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = 1.0 / math.sqrt(p.shape[1]) if p.dim() == 2 else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def check_outputs(path, got, expected, atol, rtol, skip=()):
    """Compares every out.* tensor of a case (except the names in skip / starting with a skip prefix)
    with got[name]; returns the max abs error."""
    worst = 0.0
    for k, v in expected.items():
        if not k.startswith("out.") or any(k == s or k.startswith(s) for s in skip):
            continue
        assert k in got, f"{os.path.basename(path)}: no output for {k}"
        g = got[k]
        g = g.numpy() if hasattr(g, "numpy") else g
        ok, err = close(g, v, atol, rtol)
        assert ok, f"{os.path.basename(path)}: {k} max abs err {err:.3g}"
        worst = max(worst, err)
    return worst


def window_input(B, ctx, E):
    """The stream baselines' input: the ctx tokens of history plus the new one, (B, ctx + 1, E)."""
    import torch
    return torch.randn(B, ctx + 1, E, generator=torch.Generator().manual_seed(98))


# ---- HyperMixing --------------------------------------------------------------------------------

class HyperMixing(Baseline):
    """speechbrain.nnet.hypermixing.HyperMixing, written from its SPEC (tests/data/reference/hypermixing).
    Benchmark configuration: E, hypernet_size = 4·E (K = 4E/H per head), untied, H heads, max_length =
    max(3000, T) (upstream's default 3000 would reject T = 4096)."""
    name = "hypermixing"
    FACTOR = 4

    @staticmethod
    def module_class():
        import torch
        F = torch.nn.functional

        class ParallelMLPs(torch.nn.Module):
            # One d -> d -> K MLP per head, applied to the head's channel block of every token.
            def __init__(self, d, K, H):
                super().__init__()
                self.H, self.d = H, d
                self.fc1_weights = torch.nn.Parameter(torch.empty(H, d, d))  # [h, out, in]
                self.fc1_biases = torch.nn.Parameter(torch.empty(H, d))
                self.fc2_weights = torch.nn.Parameter(torch.empty(H, K, d))
                self.fc2_biases = torch.nn.Parameter(torch.empty(H, K))

            def forward(self, z):  # (B, T, E) -> (B, H, T, K)
                B, T, _ = z.shape
                u = z.view(B, T, self.H, self.d).transpose(1, 2)  # (B, H, T, d)
                a = F.gelu(torch.matmul(u, self.fc1_weights.transpose(1, 2)) + self.fc1_biases[:, None, :])
                return torch.matmul(a, self.fc2_weights.transpose(1, 2)) + self.fc2_biases[:, None, :]

        class HyperNetwork(torch.nn.Module):
            def __init__(self, d, K, H, tied):
                super().__init__()
                self.tied = tied
                self.w1_gen = ParallelMLPs(d, K, H)
                self.w2_gen = self.w1_gen if tied else ParallelMLPs(d, K, H)

            def forward(self, z):
                W1 = self.w1_gen(z)
                return W1, (W1 if self.tied else self.w2_gen(z))

        class PositionalEncoding(torch.nn.Module):
            # Sinusoidal table computed in float32 (SPEC section 6); loaded from the state_dict in the cases.
            def __init__(self, E, max_length):
                super().__init__()
                pe = torch.zeros(max_length, E)
                pos = torch.arange(0, max_length).unsqueeze(1).float()
                den = torch.exp(torch.arange(0, E, 2).float() * -(math.log(10000.0) / E))
                pe[:, 0::2] = torch.sin(pos * den)
                pe[:, 1::2] = torch.cos(pos * den)
                self.register_buffer("pe", pe.unsqueeze(0))

            def forward(self, x):
                return self.pe[:, :x.size(1)].clone().detach()

        class HyperMixingModule(torch.nn.Module):
            def __init__(self, input_output_dim, hypernet_size, tied=False, num_heads=1, fix_tm_hidden_size=False,
                         max_length=3000):
                super().__init__()
                E, H = input_output_dim, num_heads
                self.E, self.H, self.d = E, H, E // H
                self.K = hypernet_size if fix_tm_hidden_size else hypernet_size // H
                self.hyper = HyperNetwork(self.d, self.K, H, tied)
                self.layer_norm = torch.nn.LayerNorm(E)
                self.positional_encoding = PositionalEncoding(E, max_length)

            def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None):
                x = query  # key, value, attn_mask are ignored upstream
                B, T, E = x.shape
                H, d = self.H, self.d
                if key_padding_mask is not None:
                    m = torch.logical_not(key_padding_mask).unsqueeze(-1).float()  # (B, T, 1), 1 = keep
                    x = x * m
                W1, W2 = self.hyper(x + self.positional_encoding(x))  # (B, H, T, K)
                if key_padding_mask is not None:
                    W1 = W1 * m.unsqueeze(1)
                    W2 = W2 * m.unsqueeze(1)
                xh = x.transpose(1, 2).reshape(B * H, d, T)
                S = F.gelu(torch.bmm(xh, W1.reshape(B * H, T, self.K)))           # (B·H, d, K)
                o = torch.bmm(S, W2.reshape(B * H, T, self.K).transpose(1, 2))    # (B·H, d, T)
                o = o.reshape(B, E, T).transpose(1, 2)
                return self.layer_norm(o), torch.zeros(B, T, T)  # upstream's dummy attention output

        return HyperMixingModule

    def make(self, E, H, T):
        return init_random(self.module_class()(E, self.FACTOR * E, tied=False, num_heads=H,
                                               max_length=max(3000, T + 1)))

    def check(self):
        import torch

        def run(m, t, a, path):
            kpm = torch.from_numpy(t[a["key_padding_mask"]]) if a.get("key_padding_mask") else None
            y, attn = m(torch.from_numpy(t[a["query"]]), key_padding_mask=kpm)
            assert not attn.any(), f"{os.path.basename(path)}: attn_weights not zero"
            return {"out.output": y, "out.attn_weights": attn}
        return self.replay_forward_cases(run, 2e-5, 1e-4)

    def offline_fn(self, module, B, T, E):
        import torch
        x = torch.randn(B, T, E, generator=torch.Generator().manual_seed(99))
        return lambda: module(x)

    def stream_fn(self, module, B, ctx, E):
        # No step exists upstream (and the pooling is bidirectional): a PyTorch user re-runs forward
        # over the last W = ctx + 1 tokens and keeps the newest position, as tokenmix's window stream emits.
        x = window_input(B, ctx, E)
        return lambda: module(x)[0][:, -1]

    def flops(self, mode, B, T, E, H):
        d, K = E / H, self.FACTOR * E / H
        if mode == "offline":
            return 2.0 * B * T * (2 * E * (d + K) + 2 * E * K)
        W = T + 1  # tokenmix's cached window step (same formula as tools/cli/bench_families.cpp)
        return 2.0 * B * (2 * E * d + W * E * d + E * d * K + 2 * E * K)


# ---- Fastformer -----------------------------------------------------------------------------------

class Fastformer(Baseline):
    """espnet2.asr.layers.fastformer.FastSelfAttention, written from its SPEC."""
    name = "fastformer"

    @staticmethod
    def module_class():
        import torch

        class FastSelfAttention(torch.nn.Module):
            def __init__(self, size, attention_heads, dropout_rate):
                super().__init__()
                self.h, self.d = attention_heads, size // attention_heads
                self.query = torch.nn.Linear(size, size)
                self.query_att = torch.nn.Linear(size, attention_heads)
                self.key = torch.nn.Linear(size, size)
                self.key_att = torch.nn.Linear(size, attention_heads)
                self.transform = torch.nn.Linear(size, size)
                self.dropout = torch.nn.Dropout(dropout_rate)

            def pool(self, logits, mask):  # logits (B, H, T)
                if mask is None:
                    return torch.softmax(logits, dim=-1)
                pad = mask.eq(0)  # (B, 1, T) broadcast over heads
                logits = logits.masked_fill(pad, torch.finfo(logits.dtype).min)
                return torch.softmax(logits, dim=-1).masked_fill(pad, 0.0)

            def forward(self, xs_pad, mask):
                B, T, E = xs_pad.shape
                q = self.query(xs_pad)
                k = self.key(xs_pad)
                alpha = self.pool(self.query_att(q).transpose(1, 2) / self.d ** 0.5, mask)        # (B, H, T)
                qh = q.view(B, T, self.h, self.d).transpose(1, 2)                                 # (B, H, T, d)
                gq = self.dropout(torch.matmul(alpha.unsqueeze(2), qh).reshape(B, 1, E))          # (B, 1, E)
                p = k * gq
                beta = self.pool(self.key_att(p).transpose(1, 2) / self.d ** 0.5, mask)
                ph = p.view(B, T, self.h, self.d).transpose(1, 2)
                gk = self.dropout(torch.matmul(beta.unsqueeze(2), ph).reshape(B, 1, E))
                return self.dropout(self.transform(gk * q)) + q

        return FastSelfAttention

    def make(self, E, H, T):
        return init_random(self.module_class()(E, H, 0.0))

    def check(self):
        import torch

        def run(m, t, a, path):
            mask = torch.from_numpy(t[a["mask"]]) if a.get("mask") else None
            return {"out.y": m(torch.from_numpy(t[a["xs_pad"]]), mask)}
        return self.replay_forward_cases(run, 1e-5, 1e-5)

    def offline_fn(self, module, B, T, E):
        import torch
        x = torch.randn(B, T, E, generator=torch.Generator().manual_seed(99))
        return lambda: module(x, None)

    def stream_fn(self, module, B, ctx, E):
        # No step upstream (global pooling): forward over the last W = ctx + 1 tokens, newest position.
        x = window_input(B, ctx, E)
        return lambda: module(x, None)[:, -1]

    def flops(self, mode, B, T, E, H):
        if mode == "offline":
            return 2.0 * B * T * (3 * E * E + 2 * E * H + 2 * E)
        W = T + 1
        return 2.0 * B * (3 * E * E + E * H + W * E * H + 2 * W * E)


# ---- labml MultiHeadAttention / Primer-EZ ------------------------------------------------------------

def labml_classes():
    """labml_nn MultiHeadAttention, the Primer-EZ convolutions and attention classes, SquaredReLU,
    written from tests/data/reference/primer_ez/SPEC.md. Time-major [S, B, D] layout."""
    import torch

    class PrepareForMultiHeadAttention(torch.nn.Module):
        def __init__(self, d_model, heads, d_k, bias):
            super().__init__()
            self.linear = torch.nn.Linear(d_model, heads * d_k, bias=bias)
            self.heads, self.d_k = heads, d_k

        def forward(self, x):
            return self.linear(x).view(*x.shape[:-1], self.heads, self.d_k)

    class ConvDW(torch.nn.Module):
        # SpatialDepthWiseConvolution: causal 3-tap conv per channel c < d_k, shared by the heads.
        def __init__(self, d_k, kernel_size=3):
            super().__init__()
            self.K = kernel_size
            self.conv = torch.nn.Conv1d(d_k, d_k, kernel_size, padding=kernel_size - 1, groups=d_k)

        def forward(self, x):  # [S, B, H, d_k]
            S, B, H, dk = x.shape
            y = self.conv(x.permute(1, 2, 3, 0).reshape(B * H, dk, S))[:, :, :-(self.K - 1)]
            return y.reshape(B, H, dk, S).permute(3, 0, 1, 2)

    class ConvShared(torch.nn.Module):
        # SpatialDepthWiseSharedConvolution: one kernel and one bias for every channel.
        def __init__(self, kernel_size=3):
            super().__init__()
            self.K = kernel_size
            self.conv = torch.nn.Conv1d(1, 1, kernel_size, padding=kernel_size - 1)

        def forward(self, x):
            S, B, H, dk = x.shape
            y = self.conv(x.permute(1, 2, 3, 0).reshape(B * H * dk, 1, S))[:, :, :-(self.K - 1)]
            return y.reshape(B, H, dk, S).permute(3, 0, 1, 2)

    class ConvPerHead(torch.nn.Module):
        # SpatialDepthWisePerHeadConvolution: a kernel per (head, channel), index h·d_k + c.
        def __init__(self, heads, d_k, kernel_size=3):
            super().__init__()
            self.K = kernel_size
            self.conv = torch.nn.Conv1d(heads * d_k, heads * d_k, kernel_size, padding=kernel_size - 1,
                                        groups=heads * d_k)

        def forward(self, x):
            S, B, H, dk = x.shape
            y = self.conv(x.permute(1, 2, 3, 0).reshape(B, H * dk, S))[:, :, :-(self.K - 1)]
            return y.reshape(B, H, dk, S).permute(3, 0, 1, 2)

    class ConvEfficient(torch.nn.Module):
        # efficient.SpatialDepthWiseConvolution: kernels[i, c] multiplies x[t - i]; no bias.
        def __init__(self, d_k, kernel_size=3):
            super().__init__()
            self.kernels = torch.nn.Parameter(torch.empty(kernel_size, d_k))

        def forward(self, x):
            y = x * self.kernels[0]
            for i in range(1, self.kernels.shape[0]):
                shifted = torch.cat([torch.zeros_like(x[:i]), x[:-i]], 0) if i < x.shape[0] else torch.zeros_like(x)
                y = y + shifted * self.kernels[i]
            return y

    class MultiHeadAttention(torch.nn.Module):
        def __init__(self, heads, d_model, dropout_prob=0.1, bias=True):
            super().__init__()
            self.d_k, self.heads = d_model // heads, heads
            self.query = PrepareForMultiHeadAttention(d_model, heads, self.d_k, bias)
            self.key = PrepareForMultiHeadAttention(d_model, heads, self.d_k, bias)
            self.value = PrepareForMultiHeadAttention(d_model, heads, self.d_k, True)
            self.output = torch.nn.Linear(d_model, d_model)
            self.dropout = torch.nn.Dropout(dropout_prob)
            self.scale = 1 / math.sqrt(self.d_k)
            self.attn = None

        def forward(self, *, query, key, value, mask=None):
            S, B, _ = query.shape
            if mask is not None:
                assert mask.dim() == 3
                mask = mask.unsqueeze(-1)
            q, k, v = self.query(query), self.key(key), self.value(value)
            scores = torch.einsum("ibhd,jbhd->ijbh", q, k) * self.scale
            if mask is not None:
                scores = scores.masked_fill(mask == 0, float("-inf"))
            attn = self.dropout(torch.softmax(scores, dim=1))
            self.attn = attn.detach()
            x = torch.einsum("ijbh,jbhd->ibhd", attn, v).reshape(S, B, -1)
            return self.output(x)

    def primer(conv_factory):
        class Primer(MultiHeadAttention):
            def __init__(self, heads, d_model, dropout_prob=0.1):
                super().__init__(heads, d_model, dropout_prob)
                for name in ("query", "key", "value"):
                    setattr(self, name, torch.nn.Sequential(getattr(self, name), conv_factory(heads, self.d_k)))
        return Primer

    class SquaredReLU(torch.nn.Module):
        def forward(self, x):
            r = torch.relu(x)
            return r * r

    return {
        "MultiHeadAttention": MultiHeadAttention,
        "primer_ez.MultiDConvHeadAttention": primer(lambda h, dk: ConvDW(dk)),
        "variations.MultiDSharedConvHeadAttention": primer(lambda h, dk: ConvShared()),
        "variations.MultiDPHConvHeadAttention": primer(lambda h, dk: ConvPerHead(h, dk)),
        "efficient.MultiDConvHeadAttention": primer(lambda h, dk: ConvEfficient(dk)),
        "primer_ez.SpatialDepthWiseConvolution": ConvDW,
        "variations.SpatialDepthWiseSharedConvolution": ConvShared,
        "variations.SpatialDepthWisePerHeadConvolution": ConvPerHead,
        "efficient.SpatialDepthWiseConvolution": ConvEfficient,
        "primer_ez.SquaredReLU": SquaredReLU,
    }


class LabmlMha(Baseline):
    """labml_nn.transformers.mha.MultiHeadAttention (family folder primer_ez). check() replays the
    plain-MHA cases (primer_mha_*); PrimerEz.check replays the others, so together every primer_ez case."""
    name = "labml_mha"
    cls_key = "MultiHeadAttention"
    conv_taps = 0  # causal conv taps after each of q/k/v (Primer: 3)

    def cases(self):
        return [p for p in case_files("primer_ez") if os.path.basename(p).startswith("primer_mha_")]

    def make(self, E, H, T):
        return init_random(labml_classes()[self.cls_key](H, E, 0.1))

    def check(self):
        import torch
        classes = labml_classes()
        worst, n = 0.0, 0
        for path in self.cases():
            t, meta = read_case(path)
            cls = meta["module"].split(".")[-1]
            key = next(k for k in classes if meta["module"].endswith(k))
            m = classes[key](**json.loads(meta["config"])).eval()
            load_params(m, t)
            T = {k: torch.from_numpy(v) for k, v in t.items()}
            a = json.loads(meta["call"])["args"]
            got = {}
            with torch.no_grad():
                if "x" in a:  # convolution / SquaredReLU modules
                    got["out.y"] = m(T[a["x"]])
                else:
                    q, k, v = T[a["query"]], T[a["key"]], T[a["value"]]
                    mask = T[a["mask"]] if a.get("mask") else None
                    got["out.y"] = m(query=q, key=k, value=v, mask=mask)
                    got["out.attn"] = m.attn
                    got["out.q"], got["out.k"], got["out.v"] = m.query(q), m.key(k), m.value(v)
                    if meta.get("mask_kind") == "causal" and q.shape[0] > 1:
                        # The stream baseline's shortcut: the newest causal row from the last kernel-size
                        # queries over all keys, no mask, equals the causal forward's last row.
                        tail = m(query=q[-3:], key=k, value=v)[-1]
                        ok, err = close(tail.numpy(), t["out.y"][-1], 1e-5, 1e-5)
                        assert ok, f"{os.path.basename(path)}: stream shortcut max abs err {err:.3g}"
            worst = max(worst, check_outputs(path, got, t, 1e-5, 1e-5))
            n += 1
            del cls
        return n, worst

    def offline_fn(self, module, B, T, E):
        # Layer::forward(x) of tokenmix = upstream forward(query=x, key=x, value=x, mask=None) on the
        # time-major [T, B, E] input (full self-attention; the Primer convs are causal anyway).
        import torch
        x = torch.randn(T, B, E, generator=torch.Generator().manual_seed(99))
        return lambda: module(query=x, key=x, value=x)

    def stream_fn(self, module, B, ctx, E):
        # labml has no step or cache. The cheapest correct use of forward for the newest token of a
        # causal stream: keys/values = the whole prefix (ctx + 1 tokens, re-projected every step), queries
        # = only the last max(1, taps) tokens (the query conv needs the last 3 projected rows), no mask
        # (the newest query may see every key); keep the last row. Equal to the last row of the causal
        # forward (asserted in check()).
        x = window_input(B, ctx, E).transpose(0, 1).contiguous()  # [ctx + 1, B, E]
        q = x[-max(1, self.conv_taps):]
        return lambda: module(query=q, key=x, value=x)[-1]

    def flops(self, mode, B, T, E, H):
        conv = 18.0 * E if self.conv_taps else 0.0
        if mode == "offline":
            return mha_flops(B * T, B, T, T, E) + conv * B * T
        return mha_flops(B, B, 1, T + 1, E) + conv * B


class PrimerEz(LabmlMha):
    """labml_nn.transformers.primer_ez.MultiDConvHeadAttention (per-channel causal conv shared by heads).
    check() replays every primer_ez case that is not plain MHA (the Primer attention classes and
    variants, the four convolution modules, SquaredReLU)."""
    name = "primer_ez"
    cls_key = "primer_ez.MultiDConvHeadAttention"
    conv_taps = 3

    def cases(self):
        return [p for p in case_files("primer_ez") if not os.path.basename(p).startswith("primer_mha_")]


# ---- continual-inference -------------------------------------------------------------------------------

def continual_class(retroactive):
    """continual.SingleOutputMultiheadAttention / RetroactiveMultiheadAttention, written from
    tests/data/reference/continual/SPEC.md: PyTorch 1.13 nn.MultiheadAttention plus upstream's
    forward_step (shifting FIFO state, section 6). Eval mode, no masks in step mode."""
    import torch
    F = torch.nn.functional

    class Continual(torch.nn.MultiheadAttention):
        def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, batch_first=None, sequence_len=None,
                     query_index=-1, embed_dim_second=False, single_output_forward=True):
            super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, batch_first=True)
            self.layout_bf = (not retroactive) if batch_first is None else batch_first
            self.eds = embed_dim_second
            self.L, self.qi, self.sof = sequence_len, query_index, single_output_forward
            self.hd = embed_dim // num_heads
            self.Nq = (self.L - query_index - 1 if query_index >= 0 else -query_index - 1) if not retroactive else 0
            self.state = None

        # Layout helpers: (N, T, E) batch-first <-> the configured layout.
        def to_bf(self, x):
            return x.transpose(1, 2) if self.eds else (x if self.layout_bf else x.transpose(0, 1))

        def from_bf(self, x):
            return x.transpose(1, 2) if self.eds else (x if self.layout_bf else x.transpose(0, 1))

        def forward(self, query, key=None, value=None):
            q = self.to_bf(query)
            k = q if key is None else self.to_bf(key)
            v = q if value is None else self.to_bf(value)
            if not retroactive and self.sof:
                q = q[:, [self.qi]]  # Python indexing, -1 = last
            o, attn = super().forward(q, k, v)
            return self.from_bf(o), attn

        def clean_state(self):
            self.state = None

        def fresh_state(self, N):
            z = lambda *s: torch.zeros(*s)
            NH, L, hd = N * self.num_heads, self.L, self.hd
            st = {"K_T": z(NH, hd, L), "V": z(NH, L, hd), "stride": -L}
            if retroactive:
                st.update(Q=z(NH, L - 1, hd), d=z(NH, L - 1, 1), AV=z(NH, L - 1, hd))
            else:
                st["Q"] = z(NH, self.Nq, hd)
            return st

        def forward_step(self, query, key=None, value=None, update_state=True):
            key = query if key is None else key
            value = query if value is None else value
            N, E = query.shape
            if self.state is None:
                assert update_state, "update_state=False before the first step (upstream raises)"
                self.state = self.fresh_state(N)
            st = self.state
            W, b = self.in_proj_weight, self.in_proj_bias
            bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
            NH, hd = N * self.num_heads, self.hd
            q = F.linear(query, W[:E], bq).reshape(NH, hd) / math.sqrt(hd)  # rows n·H + h
            k = F.linear(key, W[E:2 * E], bk).reshape(NH, hd)
            v = F.linear(value, W[2 * E:], bv).reshape(NH, hd)
            new = dict(st)
            K_T = torch.cat([st["K_T"][:, :, 1:], k.unsqueeze(-1)], 2)  # shifting FIFOs (newest last)
            V = torch.cat([st["V"][:, 1:], v.unsqueeze(1)], 1)
            if not retroactive:
                q_sel = st["Q"][:, 0] if self.Nq > 0 else q
                o = torch.bmm(torch.softmax(torch.bmm(q_sel.unsqueeze(1), K_T), -1), V)  # (NH, 1, hd)
                if self.Nq > 0:
                    new["Q"] = torch.cat([st["Q"][:, 1:], q.unsqueeze(1)], 1)
                out = self.out_proj(o.reshape(N, E))
            else:
                k_old, v_old = st["K_T"][:, :, 0], st["V"][:, 0]
                e_old = torch.exp(torch.bmm(st["Q"], k_old.unsqueeze(-1)))  # (NH, L-1, 1), no max subtraction
                e_new = torch.exp(torch.bmm(st["Q"], k.unsqueeze(-1)))
                e = torch.exp(torch.bmm(q.unsqueeze(1), K_T))              # (NH, 1, L)
                d = torch.cat([st["d"] - e_old + e_new, e.sum(-1, keepdim=True)], 1)               # (NH, L, 1)
                AV = torch.cat([st["AV"] - e_old * v_old.unsqueeze(1) + e_new * v.unsqueeze(1),
                                torch.bmm(e, V)], 1)                                                # (NH, L, hd)
                o = AV / d
                new.update(Q=torch.cat([st["Q"][:, 1:], q.unsqueeze(1)], 1), d=d[:, 1:], AV=AV[:, 1:])
                # out_proj of all L rows at every step, as upstream
                out = self.out_proj(o.reshape(N, self.num_heads, self.L, hd).transpose(1, 2).reshape(N, self.L, E))
                out = out.transpose(1, 2) if self.eds else (out if self.layout_bf else out.transpose(0, 1))
            new.update(K_T=K_T, V=V)
            if st["stride"] < 0:
                new["stride"] = st["stride"] + 1
            if update_state:
                self.state = new
            return out if new["stride"] >= 0 else None

        def forward_steps(self, query, key=None, value=None, update_state=True):
            axis = 2 if self.eds else (1 if self.layout_bf else 0)
            outs = []
            for t in range(query.shape[axis]):
                sl = lambda x: None if x is None else x.select(axis, t)
                o = self.forward_step(sl(query), sl(key), sl(value), update_state)
                if o is not None:
                    outs.append(o)
            if not outs:
                return None
            if retroactive:  # (N, T', L, E) / (T', L, N, E) / (N, E, T', L)
                return torch.stack(outs, 2 if self.eds else (1 if self.layout_bf else 0))
            if self.eds:
                return torch.stack(outs, 2)
            if self.layout_bf:
                return torch.stack(outs, 1)
            y = torch.stack(outs, 0).unsqueeze(1)  # quirk 2: (T', 1, N, E), (T', 1, E) when N == 1
            return y.squeeze(2) if y.shape[2] == 1 else y

    return Continual


class ContinualSo(Baseline):
    """continual.SingleOutputMultiheadAttention: stream only (forward() computes one query). The stream
    baseline is upstream's forward_step with sequence_len L = ctx + 1 (cached K/V of the window, O(L·E)
    attention + one token's projections), warmed up with the ctx history tokens."""
    name = "continual_so"
    retroactive = False

    def make(self, E, H, T):
        return init_random(continual_class(self.retroactive)(E, H, batch_first=True, sequence_len=T + 1))

    def cases(self):
        tag = "continual_retro_" if self.retroactive else "continual_so_"
        return [p for p in case_files("continual") if os.path.basename(p).startswith(tag)]

    def check(self):
        # out.final_state.* (informational, upstream's state layout) and out.winfwd.* (forward() of each
        # window, a property of the reference, not a call) are not compared.
        import torch
        worst, n = 0.0, 0
        for path in self.cases():
            t, meta = read_case(path)
            cfg = json.loads(meta["config"])
            m = continual_class(self.retroactive)(**cfg).eval()
            load_params(m, t)
            T = {k: torch.from_numpy(v) for k, v in t.items()}
            got = {}
            with torch.no_grad():
                for c in json.loads(meta["call"]):
                    if c["method"] == "clean_state":
                        m.clean_state()
                        continue
                    a = c["args"]
                    args = [T[a[k]] if a.get(k) else None for k in ("query", "key", "value")]
                    if c["method"] == "forward":
                        r = m(*args)
                    else:
                        s = c["slice"]
                        if c["method"] == "forward_step":
                            args = [None if x is None else x.select(s["axis"], s["index"]) for x in args]
                        else:
                            args = [None if x is None else x.narrow(s["axis"], s["start"], s["stop"] - s["start"])
                                    for x in args]
                        r = getattr(m, c["method"])(*args, **c.get("kwargs", {}))
                    ret = c.get("returns")
                    if ret is None:
                        assert r is None, f"{os.path.basename(path)}: expected None from {c}"
                    elif isinstance(ret, list):
                        got.update(zip(ret, r))
                    else:
                        assert r is not None, f"{os.path.basename(path)}: {ret}: got None"
                        got[ret] = r
            stream_tol = (2e-5, 1e-5) if self.retroactive else (1e-5, 1e-5)
            worst = max(worst, check_outputs(path, got, t, *stream_tol, skip=("out.final_state.", "out.winfwd.")))
            n += 1
        return n, worst

    def offline_fn(self, module, B, T, E):
        return None

    def stream_fn(self, module, B, ctx, E):
        x = window_input(B, ctx, E)
        if ctx:
            module.forward_steps(x[:, :ctx])  # warm-up: ctx tokens of history (no output before L = ctx + 1)
        token = x[:, ctx]
        return lambda: module.forward_step(token)

    def flops(self, mode, B, T, E, H):
        return mha_flops(B, B, 1, T + 1, E)


class ContinualRetro(ContinualSo):
    """continual.RetroactiveMultiheadAttention. Offline: forward() = PyTorch nn.MultiheadAttention over T.
    Stream: upstream's forward_step with L = ctx + 1 (running d/AV of the window's L queries, updated by
    the leaving and the new key; out_proj of all L outputs every step)."""
    name = "continual_retro"
    retroactive = True

    def offline_fn(self, module, B, T, E):
        import torch
        x = torch.randn(B, T, E, generator=torch.Generator().manual_seed(99))
        return lambda: module(x)

    def flops(self, mode, B, T, E, H):
        if mode == "offline":
            return mha_flops(B * T, B, T, T, E)
        W = T + 1
        return 2.0 * B * (4 * E * E + 3 * W * E + 4 * W * H * E)


# The table: one entry per measured layer, in the C++ registry's order (tools/cli/bench_families.cpp).
BASELINES = [EspnetMha(), HyperMixing(), Fastformer(), LabmlMha(), PrimerEz(), ContinualSo(), ContinualRetro()]


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
    module = base.make(E, H, T)
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
    print(f"{'layer':15} {'mode':7} {'shape':18} {'thr':>3} {'median_ms':>10} {'min_ms':>10} {'GFLOP/s':>8}  "
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
                print(f"{r['layer']:15} {r['mode']:7} {r['shape']:18} {threads:3d} {r['median_ms']:10.3f} "
                      f"{r['min_ms']:10.3f} {r['gflops']:8.1f}  {r['ref']:26} {r['ref_gflops']:8.1f} "
                      f"{100 * r['peak_fraction']:5.0f}% {r['peak_mib']:9.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
