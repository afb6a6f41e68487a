"""The layer classes: one per upstream family, each callable with its upstream module's forward signature.

Shapes use B batch, T / S time (tokens), E = d_model, H heads. Inputs are numpy arrays or CPU torch
tensors (float32, C-contiguous; masks bool or integer); outputs are of the inputs' kind, numpy when
every input is numpy. Every error is a ValueError whose message names the function and argument.
"""
from __future__ import annotations

import json

from . import _core
from ._convert import any_torch, float_in, like, mask_in, optional_float_in
from ._stream import Stream


class Layer:
    """A tokenmix layer built from an upstream module's constructor arguments and ``state_dict``.

    Immutable: calls never change it, and several Python threads may call one layer at once (the GIL
    is released during compute). Attributes: ``module`` (the upstream qualified class name),
    ``config`` (its constructor arguments), ``d_model``. Pickling keeps the weights.
    """

    def __init__(self, module: str, config: dict, impl, weights: dict, requested_precision: str = "fp32"):
        self.module = module
        self.config = dict(config)
        self._impl = impl
        # Read-only numpy views of the layer's own copy of its state_dict, or (tokenmix.load) the
        # checkpoint's tensors as stored (_core.StoredWeights), widened by state_dict().
        self._weights = weights
        self._requested = requested_precision  # as asked for ("auto" re-resolves on the CPU that unpickles)

    def __call__(self, *args, **kwargs):
        """The upstream module's forward: see ``forward`` of each class."""
        return self.forward(*args, **kwargs)

    @property
    def d_model(self) -> int:
        return self._impl.d_model

    @property
    def family(self) -> str:
        return self._impl.name

    @property
    def precision(self) -> str:
        """What the projections run in: ``"fp32"``, ``"bf16"`` or ``"int8"`` (``"auto"`` resolved for this
        CPU and these weights; an int8 layer that missed its gate at load reports what it runs instead)."""
        return self._impl.precision

    @property
    def gemm(self) -> str:
        """The GEMM implementation behind the projections, e.g. ``"onednn brg:avx512_core_bf16"``."""
        return self._impl.gemm

    @property
    def weight_bytes(self) -> int:
        """Bytes of parameters the C++ layer holds: its projections as packed for this CPU (about half /
        a quarter of the float32 bytes in bf16 / int8), plus biases, norms and tables. The float32
        ``state_dict`` this Python object keeps for ``state_dict()`` and pickling is not counted."""
        return self._impl.weight_bytes

    def state_dict(self) -> dict:
        """The upstream ``state_dict`` the layer was built from (read-only float32 numpy arrays; a
        bfloat16 checkpoint's values widened exactly)."""
        if isinstance(self._weights, dict):
            return dict(self._weights)
        return self._weights.to_numpy()

    def forward_unified(self, x, key_padding_mask=None):
        """Self-attention / token mixing in tokenmix's unified form: ``x (B, T, E)``, optional
        ``key_padding_mask (B, T)`` with True = padded. Returns ``(B, T, E)``."""
        out = self._impl.forward(float_in(x, "forward_unified", "x"),
                                 mask_in(key_padding_mask, "forward_unified", "key_padding_mask"))
        return like(out, any_torch(x))

    def stream(self, batch: int = 1, *, left_context: int = 0, window: int = 0, position: int = -1) -> Stream:
        """Opens a Stream of ``batch`` rows (see Stream for the options each family takes).
        Raises ValueError on options this family does not take or out of range."""
        return Stream(self, batch, left_context, window, position)

    def stream_reference(self, x, *, left_context: int = 0, window: int = 0, position: int = -1):
        """The offline result a stream with these options reproduces for ``x (B, T, E)`` fed in any
        chunking: ``(B, T_out, E)`` (the causal, left-context banded forward for attention; the stacked
        window outputs for windowed families; for continual attention its step outputs)."""
        out = self._impl.stream_reference(float_in(x, "stream_reference", "x"), left_context, window, position)
        return like(out, any_torch(x))

    def __reduce__(self):
        return (_rebuild, (self.module, json.dumps(self.config), self.state_dict(), self._requested))

    def __repr__(self):
        return f"tokenmix.{type(self).__name__}({self.module}, {json.dumps(self.config)})"


def _rebuild(module: str, config: str, weights: dict, precision: str = "fp32") -> Layer:
    from ._registry import make_layer

    return make_layer(module, json.loads(config), weights, precision)


class EspnetMultiHeadedAttention(Layer):
    """ESPnet ``espnet2.asr.state_spaces.attention.MultiHeadedAttention`` (Vaswani et al. 2017).

    ``layer(query, memory=None, mask=None)`` -> ``(out, None)``:
      query (B, T1, E) or (B, E) (read as T1 = 1); memory (B, T2, E) or None (self-attention);
      mask (B, 1, T2) or (B, T1, T2), True = keep, or None. out: (B, T1, E).
    ``layer.step(query, state, memory=None, mask=None)`` -> ``(out, state)``: stateless as upstream
      (state is passed through); query (B, E) gives out (B, E).
    ``layer.last_attn(query, memory=None, mask=None)``: the probabilities (B, H, T1, T2) that upstream
    leaves in its ``attn`` attribute.
    """

    def forward(self, query, memory=None, mask=None, *args, **kwargs):
        return self._forward("forward", query, memory, mask, False)[0], None

    def last_attn(self, query, memory=None, mask=None):
        return self._forward("last_attn", query, memory, mask, True)[1]

    def _forward(self, method, query, memory, mask, need_attn):
        """(out, attn or None) of upstream forward(query, memory, mask)."""
        fn = "EspnetMultiHeadedAttention." + method
        out, attn = self._impl.forward_upstream(float_in(query, fn, "query"), optional_float_in(memory, fn, "memory"),
                                                mask_in(mask, fn, "mask"), need_attn)
        t = any_torch(query, memory)
        return like(out, t), like(attn, t)

    def step(self, query, state=None, memory=None, mask=None, **kwargs):
        fn = "EspnetMultiHeadedAttention.step"
        out = self._impl.step(float_in(query, fn, "query"), optional_float_in(memory, fn, "memory"),
                              mask_in(mask, fn, "mask"))
        return like(out, any_torch(query, memory)), state


class FastSelfAttention(Layer):
    """ESPnet ``espnet2.asr.layers.fastformer.FastSelfAttention`` (Fastformer, Wu et al. 2021).

    ``layer(xs_pad, mask)`` -> y (B, T, E): xs_pad (B, T, E); mask (B, 1, T) (or (B, H, T)), True /
    non-zero = keep, or None.
    """

    def forward(self, xs_pad, mask=None):
        fn = "FastSelfAttention.forward"
        out = self._impl.forward_upstream(float_in(xs_pad, fn, "xs_pad"), mask_in(mask, fn, "mask"))
        return like(out, any_torch(xs_pad))


class HyperMixing(Layer):
    """SpeechBrain ``HyperMixing`` (Mai et al. 2023, HyperMixer; multi-head as in HyperConformer).

    ``layer(query, key, value, attn_mask=None, key_padding_mask=None, return_attn_weights=True,
    pos_embs=None)`` -> ``(out, attn)``: query (B, T, E) is mixed with itself; key, value, attn_mask and
    pos_embs are ignored, as upstream. key_padding_mask (B, T), True = padded. out (B, T, E); attn is
    upstream's placeholder, zeros of shape (B, T, T).
    """

    def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None,
                return_attn_weights=True, pos_embs=None):
        fn = "HyperMixing.forward"
        out, attn = self._impl.forward_upstream(float_in(query, fn, "query"),
                                                mask_in(key_padding_mask, fn, "key_padding_mask"), True)
        t = any_torch(query)
        return like(out, t), like(attn, t)


class LabmlMultiHeadAttention(Layer):
    """labml.ai ``MultiHeadAttention`` and the Primer-EZ multi-DConv-head attentions (So et al. 2021:
    per-channel, shared-kernel, per-head and efficient variants).

    ``layer(query=, key=, value=, mask=None)`` (keyword-only, as upstream) -> out [S, B, E]:
    query [S, B, E]; key, value [S_k, B, E]; mask [S or 1, S_k, B or 1], True = may attend, or None.
    """

    def forward(self, *, query, key, value, mask=None):
        fn = "LabmlMultiHeadAttention.forward"
        out = self._impl.forward_upstream(float_in(query, fn, "query"), float_in(key, fn, "key"),
                                          float_in(value, fn, "value"), mask_in(mask, fn, "mask"))
        return like(out, any_torch(query, key, value))


class ContinualMultiheadAttention(Layer):
    """continual-inference ``SingleOutputMultiheadAttention`` / ``RetroactiveMultiheadAttention``
    (Hedegaard et al. 2022, Continual Transformers).

    ``layer(query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None)``:
      clip-wise forward in the module's layout (batch_first (N, T, E), embed_dim_second (N, E, T), else
      (T, N, E)); key_padding_mask (N, S) and attn_mask (T, S), True = not allowed. Returns
      ``(out, attn_weights)`` (head-averaged; None when need_weights is False), or out alone when the
      module was built with ``forward_returns_attn_mask=False``.
    ``forward_step(query, key=None, value=None, update_state=True)``: one token (N, E); returns None
      while warming up. ``forward_steps(query, ...)`` over the time axis; ``clean_state()``.
      The step state lives in the layer object as upstream's does (one caller at a time for the step
      API); ``stream()`` gives independent, saveable states.
    """

    def __init__(self, module, config, impl, weights, requested_precision="fp32"):
        super().__init__(module, config, impl, weights, requested_precision)
        self._steps = _core.ContinualSteps(impl)

    @property
    def sequence_len(self) -> int:
        return self._impl.sequence_len

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None):
        fn = type(self).__name__ + ".forward"
        out, attn = self._impl.forward_upstream(
            float_in(query, fn, "query"), optional_float_in(key, fn, "key"), optional_float_in(value, fn, "value"),
            mask_in(key_padding_mask, fn, "key_padding_mask"), mask_in(attn_mask, fn, "attn_mask"),
            bool(need_weights))
        t = any_torch(query, key, value)
        if not self.config.get("forward_returns_attn_mask", True):
            return like(out, t)
        return like(out, t), like(attn, t)

    def forward_step(self, query, key=None, value=None, update_state=True, *args, **kwargs):
        return self._step("forward_step", query, key, value, update_state)

    def forward_steps(self, query, key=None, value=None, update_state=True, *args, **kwargs):
        return self._step("forward_steps", query, key, value, update_state)

    def _step(self, method, query, key, value, update_state):
        fn = f"{type(self).__name__}.{method}"
        out = getattr(self._steps, method)(float_in(query, fn, "query"), optional_float_in(key, fn, "key"),
                                           optional_float_in(value, fn, "value"), bool(update_state))
        return like(out, any_torch(query, key, value))

    def clean_state(self) -> None:
        self._steps.clean_state()


class SingleOutputMultiheadAttention(ContinualMultiheadAttention):
    __doc__ = ContinualMultiheadAttention.__doc__ + """
    Upstream shape quirk kept (continual SPEC section 7): in the sequence-first layout
    ``forward_steps`` returns (T', 1, N, E), or (T', 1, E) when N == 1.
    """

    def forward_steps(self, query, key=None, value=None, update_state=True, *args, **kwargs):
        out = super().forward_steps(query, key, value, update_state)
        if out is None or self.config.get("batch_first", True):
            return out
        T, N, E = out.shape
        return out.reshape(T, 1, E) if N == 1 else out.reshape(T, 1, N, E)


class RetroactiveMultiheadAttention(ContinualMultiheadAttention):
    __doc__ = ContinualMultiheadAttention.__doc__


# The Python class of each C++ family (Layer.family) and continual variant.
CLASSES = {
    "espnet_mha": EspnetMultiHeadedAttention,
    "fastformer": FastSelfAttention,
    "hypermixing": HyperMixing,
    "primer_ez": LabmlMultiHeadAttention,
    "continual.SingleOutputMultiheadAttention": SingleOutputMultiheadAttention,
    "continual.RetroactiveMultiheadAttention": RetroactiveMultiheadAttention,
}
