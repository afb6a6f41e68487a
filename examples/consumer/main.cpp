// Builds the layer a checkpoint describes (load_layer: module, config and weights from the file alone),
// runs it offline (its causal stream reference) and streamed token by token, and prints the largest
// difference. Given an ESPnet MHA reference case, the stream is the causal KV cache.
#include <cstdio>
#include <memory>

#include <tokenmix/tokenmix.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ESPNET_MHA_CASE.safetensors\n", argv[0]);
    return 2;
  }
  try {
    const std::unique_ptr<tokenmix::Layer> layer = tokenmix::load_layer(argv[1]);
    const int64_t E = layer->d_model();
    const tokenmix::Tensor x = tokenmix::SafetensorsFile(argv[1]).tensor("in.query");  // (B, T, E)
    const tokenmix::Tensor offline = layer->stream_reference(x, {});
    auto stream = layer->open_stream(x.dim(0));
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
