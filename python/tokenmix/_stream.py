"""Streams: chunked, stateful inference over one layer (the C++ tokenmix::Stream)."""
from __future__ import annotations

from . import _core
from ._convert import float_in, is_torch, like


class Stream:
    """An independent stream of ``batch`` rows over a layer; the state lives here, the layer is shared.

    Open one with ``layer.stream(batch=1, left_context=0, window=0, position=-1)``:

    * ``left_context`` (attention families: ESPnet MHA, labml / Primer-EZ): attend to at most this many
      tokens, the current one included; 0 = unlimited (the KV cache grows).
    * ``window``, ``position`` (Fastformer, HyperMixing): sliding window of ``window`` tokens (required),
      emitting window position ``position`` (-1 = the newest) once full.
    * continual attention takes none: its window is the module's ``sequence_len``.

    A stream may be used by one thread at a time; many streams may share a layer across threads.
    Streams are picklable (the layer travels with them).
    """

    def __init__(self, layer, batch: int = 1, left_context: int = 0, window: int = 0, position: int = -1):
        self._layer = layer
        self._args = (int(batch), int(left_context), int(window), int(position))
        self._impl = layer._impl.open_stream(*self._args)

    @property
    def layer(self):
        """The layer this stream runs."""
        return self._layer

    @property
    def batch(self) -> int:
        return self._args[0]

    def push(self, chunk):
        """Feeds chunk ``(B, C, E)`` (C >= 1 new tokens per row); returns ``(B, C_out, E)``, the outputs
        this chunk completes in time order (C_out = C for the attention families; fewer while a window
        warms up). A numpy array, or a torch tensor when chunk is one. Each output lags its token by
        ``delay()``. Raises ValueError on a bad shape or dtype."""
        return like(self._impl.push(float_in(chunk, "Stream.push", "chunk")), is_torch(chunk))

    def output_shape(self, chunk: int) -> tuple:
        """The shape ``(B, C_out, E)`` that pushing ``chunk`` tokens returns now."""
        return tuple(self._impl.output_shape(chunk))

    def delay(self) -> int:
        """Tokens by which an output lags the newest token pushed with it."""
        return self._impl.delay()

    def reset(self) -> None:
        """Forgets everything: the next push starts a new sequence in every row."""
        self._impl.reset()

    def reset_row(self, b: int) -> None:
        """Forgets row ``b`` only (its sequence ended). Raises ValueError when b is not in [0, B)."""
        self._impl.reset_row(b)

    def state(self) -> dict:
        """The whole state as a dict of numpy arrays (float32 buffers, int64 counters and the header
        ``config``); ``load_state`` of it continues bit for bit."""
        tensors, _ = _core.read_safetensors_bytes(self._impl.state())
        return tensors

    def load_state(self, state: dict) -> None:
        """Restores a ``state()`` dict. Checked before anything changes: raises ValueError when it
        was saved by another kind of stream, batch size or options, or is malformed (the stream is
        then unchanged)."""
        _, metadata = _core.read_safetensors_bytes(self._impl.state())
        self._impl.load_state(_core.safetensors_bytes(dict(state), metadata))

    def save(self, path: str) -> None:
        """Writes the state to a safetensors file (whole or absent: written to a temporary file and
        renamed). Raises ValueError when it cannot be written."""
        self._impl.save(str(path))

    def restore(self, path: str) -> None:
        """Reads a state written by ``save``; checked as ``load_state``."""
        self._impl.restore(str(path))

    def __getstate__(self):
        return {"layer": self._layer, "args": self._args, "state": self._impl.state()}

    def __setstate__(self, d):
        self.__init__(d["layer"], *d["args"])
        self._impl.load_state(d["state"])
