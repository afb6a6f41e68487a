// tools/cli/bench_families.cpp: the table of layers `tokenmix bench` and bench/tokenmix_bench measure.
// A family adds itself with one entry: params (state_dict keys + shapes), make, flops, stream options.
#include <memory>

#include "cli/bench_registry.h"
#include "tokenmix/layers/espnet_mha.h"

namespace tokenmix::bench {

namespace {

// FLOPs of the four E x E projections of n tokens plus scaled dot-product attention of q queries
// over k keys each, summed over the batch rows: Q·Kᵀ and P·V are 2·q·k·E each (all heads together).
// Softmax, scaling and bias adds are not counted.
double mha_flops(int64_t rows_projected, int64_t batch, int64_t q, int64_t k, int64_t E) {
  return 8.0 * rows_projected * E * E + 4.0 * batch * q * k * E;
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
       [](const BenchShape& s, const StateDict& sd) -> std::unique_ptr<Layer> {
         return std::make_unique<EspnetMultiHeadedAttention>(s.width, s.heads, sd);
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
  };
  return table;
}

}  // namespace tokenmix::bench
