// tools/cli/bench_families.cpp: the table of layers `tokenmix bench` and bench/tokenmix_bench measure.
// A family adds itself with one entry: params (state_dict keys + shapes), make, flops, stream options
// (and offline = false when only its stream is measured). The PyTorch side of every entry is the
// Baseline subclass of the same name in bench/torch_baseline.py; its flops() must return the same count.
//
// FLOP counts: multiply and add counted separately; softmax, scaling, bias adds, activations (GELU),
// LayerNorm and element-wise products are left out unless stated. Stream counts are the work of one
// token for an implementation that caches what the math allows (projections of past tokens, KV),
// i.e. the same count is credited to the PyTorch baseline, which recomputes more.
//
// Stream shapes: `length` tokens of history, so the timed token's attention window / sliding window is
// W = length + 1 tokens (KV-cache families: left_context = W; windowed families: window = W; continual:
// sequence_len = W).
#include <algorithm>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/bench_registry.h"
#include "tokenmix/layers/primer_ez.h"
#include "tokenmix/layers/registry.h"

namespace tokenmix::bench {

namespace {

// FLOPs of the four E x E projections of n tokens plus scaled dot-product attention of q queries
// over k keys each, summed over the batch rows: Q·Kᵀ and P·V are 2·q·k·E each (all heads together).
// Softmax, scaling and bias adds are not counted.
double mha_flops(int64_t rows_projected, int64_t batch, int64_t q, int64_t k, int64_t E) {
  return 8.0 * rows_projected * E * E + 4.0 * batch * q * k * E;
}

// Stream window of the timed token: the `length` tokens of history plus itself.
int64_t stream_window(const BenchShape& s) { return s.length + 1; }

// The layer through the library's registry, as a user would build it from a checkpoint.
std::unique_ptr<Layer> build(const std::string& module, const nlohmann::json& config, const StateDict& sd,
                             const LinearOptions& linear) {
  return make_layer(module, config.dump(), sd, linear);
}

// ---- HyperMixing (SpeechBrain): E = width, hypernet_size = 4·E (K = 4E/H per head), untied, H heads.
constexpr int64_t kHyperFactor = 4;  // hypernet_size = 4·E (2048 at E = 512), as Branchformer; K = 256 at H = 8

nlohmann::json hypermixing_config(const BenchShape& s) {
  // Upstream's default 3000 rows of positional table would reject T = 4096 / 8192; the table is
  // computed (not in params), so it just grows.
  return {{"input_output_dim", s.width},
          {"hypernet_size", kHyperFactor * s.width},
          {"tied", false},
          {"num_heads", s.heads},
          {"max_length", std::max<int64_t>(3000, std::max(s.length, stream_window(s)))}};
}

std::vector<ParamSpec> hypermixing_params(const BenchShape& s) {
  const int64_t H = s.heads, d = s.width / H, K = kHyperFactor * s.width / H;
  std::vector<ParamSpec> p;
  for (const char* g : {"hyper.w1_gen.", "hyper.w2_gen."}) {
    const std::string pre = g;
    p.push_back({pre + "fc1_weights", Shape{H, d, d}});
    p.push_back({pre + "fc1_biases", Shape{H, d}});
    p.push_back({pre + "fc2_weights", Shape{H, K, d}});
    p.push_back({pre + "fc2_biases", Shape{H, K}});
  }
  p.push_back({"layer_norm.weight", Shape{s.width}});
  p.push_back({"layer_norm.bias", Shape{s.width}});
  return p;  // positional_encoding.pe left out: the layer computes the sinusoidal table
}

// Offline: upstream's algorithm, per token: two hypernetworks d -> d -> K per head (E·(d + K) MACs
// each), then the mixing S = x̃ᵀ·W1 and o = W2·GELU(S)ᵀ (E·K MACs each). GELU, PE add, LayerNorm not
// counted. tokenmix never forms W1, W2 and executes about 3x fewer MACs (hypermixing.h): its rate by
// this count is an effective rate and can exceed the sgemm reference.
// Stream (window W, emitting the newest position), per token, tokenmix's cached algorithm (hypermixing.h):
// layer 1 of W1's net for the arriving token only (E·d; the position part is a table), x̃ᵀ·G1 over the
// window (W·E·d), S from it (E·d·K), W2 for the emitted token (E·d + E·K) and its output (E·K). The
// PyTorch baseline re-runs forward over the window (more work, same credit).
double hypermixing_flops(const BenchShape& s) {
  const double E = s.width, d = E / s.heads, K = kHyperFactor * E / s.heads;
  if (s.mode == Mode::offline) return 2.0 * s.batch * s.length * (2 * E * (d + K) + 2 * E * K);
  const double W = stream_window(s);
  return 2.0 * s.batch * (2 * E * d + W * E * d + E * d * K + 2 * E * K);
}

// ---- Fastformer (ESPnet FastSelfAttention).
std::vector<ParamSpec> fastformer_params(const BenchShape& s) {
  const int64_t E = s.width, H = s.heads;
  return concat({linear_params("query.", E, E), linear_params("query_att.", H, E), linear_params("key.", E, E),
                 linear_params("key_att.", H, E), linear_params("transform.", E, E)});
}

// Offline, per token: query, key, transform projections (3·E² MACs), the two score projections
// (2·E·H MACs), the two pooled sums gq = Σ α·q and gk = Σ β·p (2·E MACs). Element-wise k ⊙ gq,
// gk ⊙ q, softmax and the residual not counted.
// Stream (window W), per token, tokenmix's cached algorithm (fastformer.h): the new token's q, k and
// query-score projections (2·E² + E·H), the pooling over the window (gq: W·E, key scores: W·E·H,
// gk: W·E), the emitted token's transform (E²). The PyTorch baseline re-runs forward over the window.
double fastformer_flops(const BenchShape& s) {
  const double E = s.width, H = s.heads;
  if (s.mode == Mode::offline) return 2.0 * s.batch * s.length * (3 * E * E + 2 * E * H + 2 * E);
  const double W = stream_window(s);
  return 2.0 * s.batch * (3 * E * E + E * H + W * E * H + 2 * W * E);
}

// ---- labml MultiHeadAttention / Primer-EZ MultiDConvHeadAttention (per-channel causal 3-tap conv).
std::vector<ParamSpec> labml_params(const BenchShape& s, QkvConv conv) {
  const int64_t E = s.width, dk = s.width / s.heads;
  std::vector<std::vector<ParamSpec>> lists;
  for (const char* x : {"query.", "key.", "value."}) {
    const std::string pre = x;
    if (conv == QkvConv::kNone) {
      lists.push_back(linear_params(pre + "linear.", E, E));
    } else {  // kPerChannel
      lists.push_back(linear_params(pre + "0.linear.", E, E));
      lists.push_back({{pre + "1.conv.weight", Shape{dk, 1, 3}}, {pre + "1.conv.bias", Shape{dk}}});
    }
  }
  lists.push_back(linear_params("output.", E, E));
  return concat(std::move(lists));
}

// Offline: Layer::forward = full (non-causal) self-attention, as upstream forward(x, x, x, mask=None).
// Stream: one token with a KV cache of `length` tokens (left_context = W), projections of the new token
// only. Primer adds three 3-tap convolutions per projected token (3·3·E MACs).
double labml_flops(const BenchShape& s, bool primer) {
  const double conv = primer ? 18.0 * s.width : 0.0;
  if (s.mode == Mode::offline)
    return mha_flops(s.batch * s.length, s.batch, s.length, s.length, s.width) + conv * s.batch * s.length;
  return mha_flops(s.batch, s.batch, 1, stream_window(s), s.width) + conv * s.batch;
}

BenchFamily labml_family(const std::string& name, QkvConv conv) {
  const bool primer = conv != QkvConv::kNone;
  return {name,
          [conv](const BenchShape& s) { return labml_params(s, conv); },
          [primer](const BenchShape& s, const StateDict& sd, const LinearOptions& linear) {
            return build(primer ? "labml_nn.transformers.primer_ez.MultiDConvHeadAttention"
                                : "labml_nn.transformers.mha.MultiHeadAttention",
                         {{"heads", s.heads}, {"d_model", s.width}}, sd, linear);
          },
          [primer](const BenchShape& s) { return labml_flops(s, primer); },
          [](const BenchShape& s) {
            StreamOptions o;
            o.left_context = stream_window(s);
            return o;
          }};
}

// ---- continual-inference CoSiMHA / CoReMHA: PyTorch nn.MultiheadAttention weights, window L = W.
std::vector<ParamSpec> continual_params(const BenchShape& s) {
  const int64_t E = s.width;
  return concat({{{"in_proj_weight", Shape{3 * E, E}}, {"in_proj_bias", Shape{3 * E}}},
                 linear_params("out_proj.", E, E)});
}

// (the stream options carry no window: sequence_len is the constructor's; Layer::forward and the
// streams are batch-first whatever batch_first says)
nlohmann::json continual_config(const BenchShape& s) {
  return {{"embed_dim", s.width}, {"num_heads", s.heads}, {"sequence_len", stream_window(s)}, {"batch_first", true}};
}

}  // namespace

const std::vector<BenchFamily>& families() {
  static const std::vector<BenchFamily> table{
      // ESPnet MultiHeadedAttention: offline = full self-attention over T; stream = one token with a
      // KV cache of `length` tokens (attends length + 1 keys, projects only the new token).
      {"espnet_mha",
       [](const BenchShape& s) {
         return concat({linear_params("linear_q.", s.width, s.width), linear_params("linear_k.", s.width, s.width),
                        linear_params("linear_v.", s.width, s.width),
                        linear_params("linear_out.", s.width, s.width)});
       },
       [](const BenchShape& s, const StateDict& sd, const LinearOptions& linear) {
         return build("espnet2.asr.state_spaces.attention.MultiHeadedAttention",
                      {{"n_feat", s.width}, {"n_head", s.heads}}, sd, linear);
       },
       [](const BenchShape& s) {
         return s.mode == Mode::offline ? mha_flops(s.batch * s.length, s.batch, s.length, s.length, s.width)
                                        : mha_flops(s.batch, s.batch, 1, s.length + 1, s.width);
       },
       [](const BenchShape& s) {
         StreamOptions o;
         o.left_context = s.length + 1;
         return o;
       }},
      // SpeechBrain HyperMixing (E, hypernet_size 4E, H heads, untied): offline = forward over T
      // (bidirectional pooling); stream = sliding window of W = length + 1 tokens emitting the newest
      // position (the layer cannot be causal).
      {"hypermixing", hypermixing_params,
       [](const BenchShape& s, const StateDict& sd, const LinearOptions& linear) {
         return build("speechbrain.nnet.hypermixing.HyperMixing", hypermixing_config(s), sd, linear);
       },
       hypermixing_flops,
       [](const BenchShape& s) {
         StreamOptions o;
         o.window = stream_window(s);
         o.position = -1;
         return o;
       }},
      // ESPnet FastSelfAttention (Fastformer): offline = forward over T; stream = sliding window of
      // W = length + 1 tokens emitting the newest position (global pooling cannot be causal).
      {"fastformer", fastformer_params,
       [](const BenchShape& s, const StateDict& sd, const LinearOptions& linear) {
         return build("espnet2.asr.layers.fastformer.FastSelfAttention",
                      {{"size", s.width}, {"attention_heads", s.heads}, {"dropout_rate", 0.0}}, sd, linear);
       },
       fastformer_flops,
       [](const BenchShape& s) {
         StreamOptions o;
         o.window = stream_window(s);
         o.position = -1;
         return o;
       }},
      // labml MultiHeadAttention and Primer-EZ MultiDConvHeadAttention (per-channel conv shared by heads).
      labml_family("labml_mha", QkvConv::kNone),
      labml_family("primer_ez", QkvConv::kPerChannel),
      // continual-inference SingleOutputMultiheadAttention: stream only (its forward() computes one
      // query). One token: q/k/v projections of the token and out_proj (4·E²), attention of the newest
      // query over the L = W cached keys/values.
      {"continual_so", continual_params,
       [](const BenchShape& s, const StateDict& sd, const LinearOptions& linear) {
         return build("continual.multihead_attention.single_output_mha.SingleOutputMultiheadAttention",
                      continual_config(s), sd, linear);
       },
       [](const BenchShape& s) { return mha_flops(s.batch, s.batch, 1, stream_window(s), s.width); },
       [](const BenchShape&) { return StreamOptions{}; }, /*offline=*/false},
      // continual-inference RetroactiveMultiheadAttention. Offline: forward() = PyTorch MHA over T
      // (non-causal). Stream: all L = W outputs of the window per token. Count of tokenmix's update
      // (continual_mha.h), per token and batch row: q/k/v projections and the per-head out_proj of the
      // new value (4·E²), the new query row (scores W·E, numerator W·H·E), the W-1 cached rows (scores vs
      // the leaving and the new key 2·W·E, numerator updates 2·W·H·E), the W outputs (W·H·E); upstream's
      // step instead re-projects all W outputs (W·E² MACs), which this count does not credit.
      {"continual_retro", continual_params,
       [](const BenchShape& s, const StateDict& sd, const LinearOptions& linear) {
         return build("continual.multihead_attention.retroactive_mha.RetroactiveMultiheadAttention",
                      continual_config(s), sd, linear);
       },
       [](const BenchShape& s) {
         if (s.mode == Mode::offline) return mha_flops(s.batch * s.length, s.batch, s.length, s.length, s.width);
         const double E = s.width, H = s.heads, W = stream_window(s);
         return 2.0 * s.batch * (4 * E * E + 3 * W * E + 4 * W * H * E);
       },
       [](const BenchShape&) { return StreamOptions{}; }},
  };
  return table;
}

}  // namespace tokenmix::bench
