// Loads ESPnet multi-head attention weights from a safetensors file (keys param.linear_q.weight, ...),
// runs self-attention offline and streamed through the KV cache, and prints the largest difference.
#include <cstdio>

#include <tokenmix/tokenmix.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ESPNET_MHA_CASE.safetensors\n", argv[0]);
    return 2;
  }
  try {
    const tokenmix::SafetensorsFile file(argv[1]);
    const tokenmix::StateDict weights = tokenmix::StateDict::from_file(file, "param.");
    const int64_t E = weights.get("linear_q.weight").dim(0);
    const tokenmix::EspnetMultiHeadedAttention mha(E, /*n_head=*/4, weights);
    const tokenmix::Tensor x = file.tensor("in.query");  // (B, T, E)
    const tokenmix::Tensor offline = mha.stream_reference(x, {});
    auto stream = mha.open_stream(x.dim(0));
    float worst = 0.f;
    for (int64_t t = 0; t < x.dim(1); ++t) {
      tokenmix::Tensor token{tokenmix::Shape{x.dim(0), 1, E}};
      for (int64_t b = 0; b < x.dim(0); ++b)
        for (int64_t e = 0; e < E; ++e) token.at(b, 0, e) = x.at(b, t, e);
      const tokenmix::Tensor y = stream->push(token);
      for (int64_t b = 0; b < x.dim(0); ++b)
        for (int64_t e = 0; e < E; ++e) worst = std::max(worst, std::abs(y.at(b, 0, e) - offline.at(b, t, e)));
    }
    std::printf("streamed %lld tokens; max |stream - offline causal| = %.3g\n", static_cast<long long>(x.dim(1)),
                worst);
    return worst <= 1e-5f ? 0 : 1;
  } catch (const tokenmix::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
