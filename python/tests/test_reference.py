"""Every reference case (tests/data/reference) through tokenmix.load and the Python drop-in calls.

A case holds the upstream state_dict (param.*), inputs (in.*), the upstream outputs (out.*) and the
call that produced them; here the call is replayed through the upstream-shaped Python API and every
output it returns is compared with the family SPEC's tolerance.
"""
import json
import re

import numpy as np
import pytest

import tokenmix
from tokenmix import _core

from conftest import REFERENCE_DIR, assert_close

CASES = sorted(REFERENCE_DIR.glob("*/*.safetensors"))
# Stand-alone building blocks that are cases but not sequence layers (tokenmix.load refuses them).
NOT_LAYERS = ("SpatialDepthWise", "SquaredReLU")
TOLERANCE = {"espnet_mha": (1e-5, 1e-5), "continual": (2e-5, 1e-5), "hypermixing": (2e-5, 1e-4),
             "primer_ez": (1e-5, 1e-5), "fastformer": (1e-5, 1e-5)}


def resolve(tensors, ref):
    """'in.x' or 'in.x[:, 0, :]' / 'in.query[:, :2, :]' -> the array (basic slicing only)."""
    if ref is None:
        return None
    m = re.fullmatch(r"([\w.]+)(?:\[(.*)\])?", ref)
    assert m, ref
    a = tensors[m.group(1)]
    if m.group(2) is None:
        return a
    index = []
    for part in m.group(2).split(","):
        part = part.strip()
        if ":" in part:
            lo, hi = part.split(":")
            index.append(slice(int(lo) if lo else None, int(hi) if hi else None))
        else:
            index.append(int(part))
    return np.ascontiguousarray(a[tuple(index)])


def sliced(tensors, entry, name):
    ref = entry["args"].get(name)
    if ref is None:
        return None
    a = tensors[ref]
    s = entry.get("slice")
    if s is None:
        return a
    index = [slice(None)] * a.ndim
    index[s["axis"]] = s["index"] if "index" in s else slice(s["start"], s["stop"])
    return np.ascontiguousarray(a[tuple(index)])


def replay(layer, call, tensors):
    """{out name: array} produced by replaying the case's call through the Python API."""
    out = {}
    if isinstance(layer, tokenmix.ContinualMultiheadAttention):
        for entry in call:
            method = entry["method"]
            if method == "clean_state":
                layer.clean_state()
                continue
            q, k, v = (sliced(tensors, entry, n) for n in ("query", "key", "value"))
            if method == "forward":
                o, attn = layer(q, k, v)
                out[entry["returns"][0]] = o
                if len(entry["returns"]) > 1 and entry["returns"][1]:
                    out[entry["returns"][1]] = attn
                continue
            update = entry.get("kwargs", {}).get("update_state", True)
            y = getattr(layer, method)(q, k, v, update_state=update)
            if isinstance(entry["returns"], str):
                out[entry["returns"]] = y
            else:
                assert y is None, f"{method} returned {y.shape} where upstream returned None"
        return out
    if isinstance(call, list):  # ESPnet step sequence: outputs stacked as out.steps
        steps = []
        for entry in call:
            a = entry["args"]
            y, state = layer.step(resolve(tensors, a["query"]), None, resolve(tensors, a.get("memory")),
                                  resolve(tensors, a.get("mask")))
            assert state is None
            steps.append(y)
        out["out.steps"] = np.stack(steps)
        return out
    a = call["args"]
    r = call["returns"]
    if isinstance(layer, tokenmix.EspnetMultiHeadedAttention):
        y, none = layer(resolve(tensors, a["query"]), resolve(tensors, a.get("memory")), resolve(tensors, a.get("mask")))
        assert none is None
        out[r[0]] = y
        if "attrs_after" in call:
            out[call["attrs_after"]["attn"]] = layer.last_attn(resolve(tensors, a["query"]),
                                                               resolve(tensors, a.get("memory")),
                                                               resolve(tensors, a.get("mask")))
    elif isinstance(layer, tokenmix.HyperMixing):
        x = resolve(tensors, a["query"])
        o, attn = layer(x, x, x, key_padding_mask=resolve(tensors, a.get("key_padding_mask")))
        out[r[0]] = o
        out[r[1]] = attn
    elif isinstance(layer, tokenmix.FastSelfAttention):
        out[r[0]] = layer(resolve(tensors, a["xs_pad"]), resolve(tensors, a.get("mask")))
    elif isinstance(layer, tokenmix.LabmlMultiHeadAttention):
        out[r] = layer(query=resolve(tensors, a["query"]), key=resolve(tensors, a["key"]),
                       value=resolve(tensors, a["value"]), mask=resolve(tensors, a.get("mask")))
    else:
        raise AssertionError(f"no replay for {type(layer).__name__}")
    return out


def test_every_family_has_cases():
    families = {p.parent.name for p in CASES}
    assert families == set(TOLERANCE), families
    assert len(CASES) >= 92


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_reference_case(path):
    tensors, metadata = _core.read_safetensors(str(path))
    if any(s in metadata["module"] for s in NOT_LAYERS):
        with pytest.raises(ValueError, match="not a sequence layer"):
            tokenmix.load(path)
        return
    layer = tokenmix.load(path)
    assert layer.module == tokenmix._registry.ALIASES.get(metadata["module"], metadata["module"])
    atol, rtol = TOLERANCE[path.parent.name]
    outputs = replay(layer, json.loads(metadata["call"]), tensors)
    assert outputs, "the replay produced nothing"
    for name, actual in outputs.items():
        expected = tensors[name]
        assert_close(np.asarray(actual).reshape(expected.shape), expected, atol, rtol, f"{path.stem} {name}")
