"""Building layers: from upstream PyTorch modules (from_torch), from module name + config + weights
(make_layer), and self-describing checkpoints (save / load)."""
from __future__ import annotations

import json
import os

import numpy as np

from . import _core
from ._convert import float_in
from ._layers import CLASSES, Layer

# Qualified class names from_torch recognises (upstream __module__ + "." + __qualname__) and the
# registry name tokenmix stores them under (SpeechBrain moved HyperMixing between 0.5 and 1.0).
_HYPERMIXING = "speechbrain.nnet.hypermixing.HyperMixing"
ALIASES = {"speechbrain.lobes.models.transformer.hypermixing.HyperMixing": _HYPERMIXING}


def supported_modules() -> list:
    """Every supported upstream class: a list of (qualified class name, family, constructor options)."""
    return [(m, f, list(o)) for m, f, o in _core.supported_modules()]


def make_layer(module: str, config: dict, weights: dict, precision: str = "fp32") -> Layer:
    """The layer of upstream class ``module`` (qualified name) built with constructor arguments
    ``config`` (absent ones take upstream's defaults) and ``weights`` (upstream state_dict keys ->
    float32 arrays or tensors). ``precision`` of its projections: ``"fp32"``, ``"bf16"`` (weights and
    projection inputs rounded to bfloat16, float32 accumulation and output; within 1e-2 of the
    output's scale), ``"int8"`` (weights quantized per output feature, inputs per row, int32
    accumulation; within 5e-2; a layer that misses that on a probe input at load runs bf16 or fp32)
    or ``"auto"`` (bf16 where this CPU runs it faster, AMX or AVX512-BF16 on AMD, and the layer's
    weights pass bf16's gate; else fp32). ``Layer.precision`` tells which runs. Raises ValueError for an
    unsupported module or option, a bad value, missing / unexpected / mis-shaped weights, an unknown
    precision, bf16 on a CPU without AVX512-BF16 / AMX, or int8 without AVX512-VNNI / AMX."""
    module = ALIASES.get(module, module)
    if not isinstance(config, dict):
        raise ValueError(f"make_layer: config: expected a dict of constructor arguments, got {type(config).__name__}")
    try:
        config_json = json.dumps(config)
    except TypeError as e:
        raise ValueError(f"make_layer: config: not JSON-serialisable: {e}") from None
    arrays = {str(k): float_in(v, "make_layer", f"weights['{k}']") for k, v in weights.items()}
    impl, views = _core.make_layer(module, config_json, arrays, precision)
    cls = CLASSES.get(impl.name) or CLASSES["continual." + module.rsplit(".", 1)[-1]]
    return cls(module, config, impl, views, precision)


def _dropout(m, name: str) -> float:
    d = getattr(m, name, None)
    return float(getattr(d, "p", 0.0) or 0.0) if d is not None else 0.0


def _espnet_mha(m):
    return {"n_feat": m.linear_q.in_features, "n_head": m.h, "dropout": _dropout(m, "dropout")}


def _fastformer(m):
    return {"size": m.query.in_features, "attention_heads": m.num_attention_heads,
            "dropout_rate": _dropout(m, "dropout")}


def _labml(bias: bool):
    def read(m):
        c = {"heads": m.heads, "d_model": m.output.in_features, "dropout_prob": _dropout(m, "dropout")}
        if bias:
            c["bias"] = m.query.linear.bias is not None
        return c

    return read


def _hypermixing(m):
    gen = m.hyper.w1_gen
    return {"input_output_dim": m.input_output_dim, "hypernet_size": gen.original_out_size,
            "tied": bool(m.hyper.tied), "num_heads": m.num_heads,
            "fix_tm_hidden_size": gen.output_size == gen.original_out_size and m.num_heads > 1,
            "max_length": m.positional_encoding.max_len}


def _continual(single: bool):
    def read(m):
        c = {"embed_dim": m.embed_dim, "num_heads": m.num_heads, "sequence_len": m.sequence_len,
             "dropout": float(m.dropout), "bias": m.in_proj_bias is not None or getattr(m.out_proj, "bias", None) is not None,
             "add_bias_kv": m.bias_k is not None, "add_zero_attn": bool(m.add_zero_attn),
             "kdim": None if m.kdim == m.embed_dim else m.kdim, "vdim": None if m.vdim == m.embed_dim else m.vdim,
             "batch_first": bool(m.batch_first), "embed_dim_second": bool(m.embed_dim_second),
             "forward_returns_attn_mask": bool(m.forward_returns_attn_mask)}
        if single:
            c["query_index"] = int(m.query_index)
            c["single_output_forward"] = bool(m.single_output_forward)
        return c

    return read


_PRIMER = "labml_nn.transformers.primer_ez."
READERS = {
    "espnet2.asr.state_spaces.attention.MultiHeadedAttention": _espnet_mha,
    "espnet2.asr.layers.fastformer.FastSelfAttention": _fastformer,
    "labml_nn.transformers.mha.MultiHeadAttention": _labml(True),
    _PRIMER + "MultiDConvHeadAttention": _labml(False),
    _PRIMER + "variations.MultiDSharedConvHeadAttention": _labml(False),
    _PRIMER + "variations.MultiDPHConvHeadAttention": _labml(False),
    _PRIMER + "efficient.MultiDConvHeadAttention": _labml(False),
    _HYPERMIXING: _hypermixing,
    "continual.multihead_attention.single_output_mha.SingleOutputMultiheadAttention": _continual(True),
    "continual.multihead_attention.retroactive_mha.RetroactiveMultiheadAttention": _continual(False),
}


def qualified_name(module) -> str:
    """The registry name of a torch module's class (aliases resolved)."""
    cls = type(module)
    name = cls.__module__ + "." + cls.__qualname__
    return ALIASES.get(name, name)


def describe(module):
    """(registry name, constructor config, state_dict as numpy arrays) of a supported torch module.
    Raises ValueError naming the class when it is not supported."""
    name = qualified_name(module)
    reader = READERS.get(name)
    if reader is None:
        supported = "\n  ".join(sorted(READERS) + sorted(ALIASES))
        raise ValueError(f"from_torch: module: unsupported class '{name}'; supported:\n  {supported}")
    weights = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        if not v.is_floating_point():
            raise ValueError(f"from_torch: {name}: state_dict['{k}']: expected a floating-point tensor, got {v.dtype}")
        weights[k] = v.float().contiguous().numpy()
    return name, reader(module), weights


def from_torch(module, precision: str = "fp32") -> Layer:
    """The tokenmix layer equivalent to a PyTorch module of a supported upstream class (by qualified
    class name): its constructor arguments are read from the module, its weights from ``state_dict()``
    (copied: later changes to the module do not reach the layer). Dropout is not applied (inference).
    ``precision``: see ``make_layer``. Raises ValueError for an unsupported class or option (e.g.
    ESPnet's unsupported arguments) or precision."""
    name, config, weights = describe(module)
    return make_layer(name, config, weights, precision)


def save(module, path) -> None:
    """Writes a self-describing checkpoint: one safetensors file with the upstream ``state_dict`` under
    its own keys and ``module`` / ``config`` in the metadata, which ``load`` here and the C++
    ``load_layer`` / ``tokenmix`` CLI read. ``module`` is a supported torch module or a tokenmix Layer.
    The file is written whole or not at all. Raises ValueError when it cannot be written."""
    if isinstance(module, Layer):
        name, config, weights = module.module, module.config, module.state_dict()
    else:
        name, config, weights = describe(module)
    _core.write_safetensors(os.fspath(path), {k: np.ascontiguousarray(v) for k, v in weights.items()},
                            {"module": name, "config": json.dumps(config)})


def load(path, precision: str = "fp32") -> Layer:
    """The layer a self-describing checkpoint describes (or a reference case file, whose weights are
    its ``param.*`` tensors), its projections in ``precision`` (see ``make_layer``). The weights go
    from the file to the layer without a float32 detour: a BF16 checkpoint loaded at ``"bf16"`` packs
    its projections from the stored bfloat16 values, and the layer keeps the file's tensors as
    stored (bfloat16 in half the bytes) for ``state_dict()``, which widens them when called. Raises
    ValueError naming the file when it cannot be read, lacks ``module`` / ``config`` metadata, or
    holds an unsupported module, a non-float weight or bad weights, and for an unsupported
    precision."""
    impl, stored, metadata = _core.load_layer(os.fspath(path), precision)
    config = json.loads(metadata["config"])  # checked by the C++ registry: a JSON object
    module = ALIASES.get(metadata["module"], metadata["module"])
    cls = CLASSES.get(impl.name) or CLASSES["continual." + module.rsplit(".", 1)[-1]]
    return cls(module, config, impl, stored, precision)
