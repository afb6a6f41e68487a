// tokenmix/streaming/stream.h: the one interface every layer family implements.
//
// A Layer holds immutable weights only. All per-stream state (KV cache, conv history, sliding
// windows, counters) lives in a Stream opened from it, so one Layer can serve many concurrent streams
// from several threads (Layer methods are const and thread-safe; a Stream is used by one thread at a
// time).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenmix/core/tensor.h"
#include "tokenmix/core/threads.h"
#include "tokenmix/io/safetensors.h"
#include "tokenmix/kernels/linear.h"

namespace tokenmix {

struct StreamOptions {
  // Attention families (causal self-attention with a KV cache): attend to at most this many
  // tokens, the current one included (0 = unlimited). The cache becomes a ring buffer of this size.
  int64_t left_context = 0;
  // Pooling families (Fastformer, HyperMixing): sliding-window length L in tokens (required, >= 1).
  // Continual attention uses its own sequence_len and ignores this.
  int64_t window = 0;
  // Pooling families: which window position's output is emitted once the window is full,
  // 0 <= position < window, or -1 for the last (newest) token.
  int64_t position = -1;
};

// The StreamOptions fields a layer's streams read; the others must stay at their defaults (0, 0, -1).
struct StreamOptionSpec {
  bool left_context = false;  // KV-cache families: options.left_context (0 = unlimited, <= max_left_context)
  bool window = false;        // windowed families: options.window (1 <= window <= max_window) and position
  int64_t max_window = 0;     // the largest window accepted (when window)
};

class Stream {
 public:
  virtual ~Stream() = default;
  // chunk: (B, C, E) with C >= 1. Returns (B, C_out, E), the outputs this chunk completes, in time
  // order (C_out = C for the causal attention families; fewer while a window is warming up). When
  // rows are out of step (one was reset_row'ed), C_out is the largest count over the rows, outputs are
  // aligned on the chunk's newest token, and a row with fewer outputs has zeros in its leading slots.
  // The returned tensor views the stream's own buffer and stays valid until the next call on the stream.
  // Threads: a chunk of fewer than parallel_min_tokens() tokens in all (B·C < 8 for most streams)
  // is processed on the calling thread alone (core/threads.h says why); larger chunks use the
  // calling thread's OpenMP setting. Throws Error "<Layer>Stream::push: chunk: expected shape (B, C, E), got ..." on a bad
  // chunk.
  Tensor push(const Tensor& chunk);
  // The shape the next push of a chunk of `chunk` tokens returns, (B, C_out, E), given the state.
  virtual Shape output_shape(int64_t chunk) const = 0;
  // Tokens by which an output lags the newest token of its push: the output emitted with token t
  // belongs to token t - delay() (0 for the causal attention streams; L - 1 - P for a window of L
  // emitting position P; L - 1 - query_index for continual single-output attention).
  virtual int64_t delay() const = 0;
  // Forget everything: the next push starts a new sequence in every batch row.
  virtual void reset() = 0;
  // Forget batch row b only (its sequence ended; the other rows go on). Throws Error when
  // b is not in [0, B).
  virtual void reset_row(int64_t b) = 0;
  // Writes every state tensor (and counters) of the stream into writer / reads them back. A restored
  // stream continues bit-for-bit like the original. Every state starts with the same header, written
  // and checked here for every stream: metadata "stream" = the stream's class name and an I64
  // "config" tensor of the values that must match (batch, E, ... as the error names them). The file
  // is untrusted: restore throws Error naming the file and tensor when it was saved by another kind
  // of stream or with another batch size or options, when a tensor is missing or mis-shaped, or when
  // a counter is out of range (tokens seen outside [0, limits::kMaxStreamTokens], windows that
  // disagree); it checks everything before it changes anything, so a failed restore leaves the
  // stream exactly as it was.
  void save(SafetensorsWriter& writer) const;
  void restore(const SafetensorsFile& file);
  // Convenience wrappers over save/restore with a file path; save writes a temporary file renamed
  // into place (the file is whole or absent) and throws Error when it cannot be written.
  void save(const std::string& path) const;
  void restore(const std::string& path);
  // The state in memory: the bytes of the safetensors file save() would write (named tensors: read
  // them with SafetensorsFile::from_bytes), for pickling or moving a stream between processes.
  std::vector<uint8_t> state() const;
  // restore() from such bytes.
  void load_state(const std::vector<uint8_t>& bytes);

 protected:
  // The family's push: everything push() documents except the thread limit, which push() has set.
  virtual Tensor push_chunk(const Tensor& chunk) = 0;
  // Tokens (B·C) from which a push may use more threads than the calling one: threshold::kStreamTokens,
  // or 1 for a stream whose every token costs far more than waking a thread (HyperMixing's window).
  virtual int64_t parallel_min_tokens() const { return threshold::kStreamTokens; }
  // The state header: the class name saved as metadata "stream", the config values that must match
  // on restore, and their names for the error (e.g. "batch, E, H, left_context").
  virtual std::string state_name() const = 0;
  virtual std::vector<int64_t> state_config() const = 0;
  virtual std::string state_config_names() const = 0;
  // The family's state after the header. restore_state is all or nothing: it checks everything it
  // reads before it changes anything.
  virtual void save_state(SafetensorsWriter& writer) const = 0;
  virtual void restore_state(const SafetensorsFile& file) = 0;
};

class Layer {
 public:
  virtual ~Layer() = default;
  // Short family name, e.g. "espnet_mha".
  virtual std::string name() const = 0;
  virtual int64_t d_model() const = 0;
  // Offline self-attention / token mixing. x: (B, T, E); key_padding_mask: (B, T), true = padded
  // (ignored as key/token), or empty. Returns (B, T, E). Throws Error on a shape mismatch.
  virtual Tensor forward(const Tensor& x, const Mask& key_padding_mask = {}) const = 0;
  // The offline definition a stream reproduces when fed x in any chunking: for the attention
  // families the causal (left-context banded) forward; for the windowed families the stacked window
  // outputs. x: (B, T, E); returns (B, T_out, E). Throws Error on invalid options.
  virtual Tensor stream_reference(const Tensor& x, const StreamOptions& options) const = 0;
  // Which stream options this layer takes (continual attention: none, its window is sequence_len).
  virtual StreamOptionSpec stream_options_accepted() const = 0;
  // Opens a stream for `batch` rows. Throws Error on invalid options or for configurations the
  // math cannot stream.
  virtual std::unique_ptr<Stream> open_stream(int64_t batch, const StreamOptions& options = {}) const = 0;
  // One of its projections; all of a layer's projections share its LinearOptions, so this one's
  // precision() (fp32 or bf16: what runs, auto resolved) and impl() (e.g. "onednn
  // brg:avx512_core_bf16") describe them all.
  virtual const Linear& projection() const = 0;
  // Whether the projections run in bf16 or int8: the layer's attention then takes bf16 operands too
  // (AttentionShape::bf16_products).
  bool reduced_precision() const { return projection().precision() != Precision::kFp32; }
  // Bytes of parameters this layer holds: its projections as packed (plus float32 where its own
  // products read them, Linear::weight_bytes), biases, norms, convolution taps and positional tables.
  // A bf16 / int8 layer holds about half / a quarter of its fp32 projections' bytes.
  virtual int64_t weight_bytes() const = 0;
};

// Bytes of a float32 tensor's elements (0 for an empty one).
inline int64_t tensor_bytes(const Tensor& t) { return t.empty() ? 0 : t.numel() * static_cast<int64_t>(sizeof(float)); }

}  // namespace tokenmix
