// The SingleOutputMultiheadAttention stream (continual_stream.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "continual_stream.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/kernels/linear.h"

namespace tokenmix {

namespace {

using detail::ContinualStreamImpl;

// ---- SingleOutput stream: cached K/V windows, a delay line of Nq + 1 scaled queries. ----
class SingleOutputStream final : public ContinualStreamImpl {
 public:
  SingleOutputStream(const ContinualMultiheadAttention& layer, int64_t batch)
      : ContinualStreamImpl(layer, batch, "SingleOutputMultiheadAttentionStream", {layer.delay()},
                            {{"q.", layer.delay() + 1, layer.d_model()},
                             {"k.", layer.sequence_len(), layer.d_model()},
                             {"v.", layer.sequence_len(), layer.d_model()}}) {}

  Tensor step(const float* xq, const float* xk, const float* xv, int64_t C) override {
    project_chunk(xq, xk, xv, B_ * C);
    const int64_t C_out = outputs_for(C), n_out = B_ * C_out;
    if (static_cast<int64_t>(ctx_.size()) < B_ * C * E_) {  // sized for C outputs: no growth after warm-up
      ctx_.resize(B_ * C * E_);
      out_.resize(B_ * C * E_);
      ready_.resize(B_ * C);
      attention_reserve(C, L_, D_);
    }
    AttentionShape s = AttentionShape::scaled(1, H_, D_, 1, L_);
    s.scale = 1.f;  // queries are cached scaled
    int64_t o = 0;
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t b = 0; b < B_; ++b) {
        const int64_t row = (b * C + c) * E_;
        qwin().push(b, pq_.data() + row);
        kwin().push(b, pk_.data() + row);
        vwin().push(b, pv_.data() + row);
      }
      if (seen_ + c < L_ - 1) continue;
      for (int64_t b = 0; b < B_; ++b) {
        const int64_t idx = b * C_out + o;
        ready_[idx] = kwin().full(b);
        if (!ready_[idx]) continue;
        // The oldest cached query is the one of window position query_index.
        attention(s, HeadsView{qwin().rows(b), 0, E_}, HeadsView{kwin().rows(b), 0, E_},
                  HeadsView{vwin().rows(b), 0, E_}, nullptr, HeadsOut{ctx_.data() + idx * E_, 0, E_});
      }
      ++o;
    }
    seen_ += C;
    project_out(ctx_.data(), n_out, out_.data());
    for (int64_t i = 0; i < n_out; ++i)
      if (!ready_[i]) std::fill(out_.data() + i * E_, out_.data() + (i + 1) * E_, 0.f);
    return Tensor::view(Shape{B_, C_out, E_}, out_.data());
  }

  std::unique_ptr<ContinualStreamImpl> clone() const override {
    return std::make_unique<SingleOutputStream>(*this);
  }
  int64_t delay() const override { return layer_.delay(); }

 private:
  // Windows: a delay line of query_delay + 1 scaled queries, L keys, L values.
  SlidingWindow& qwin() { return window(0); }
  SlidingWindow& kwin() { return window(1); }
  SlidingWindow& vwin() { return window(2); }
  std::vector<float> ctx_, out_;
  std::vector<uint8_t> ready_;
};

}  // namespace

std::unique_ptr<ContinualStreamImpl> detail::make_single_output_stream(const ContinualMultiheadAttention& layer,
                                                                       int64_t batch) {
  return std::make_unique<SingleOutputStream>(layer, batch);
}

}  // namespace tokenmix
