// The RetroactiveMultiheadAttention stream (continual_stream.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "continual_stream.h"
#include "tokenmix/kernels/accumulate.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/kernels/linear.h"

namespace tokenmix {

namespace {

using detail::ContinualStreamImpl;

// ---- Retroactive stream: windows of scaled queries, keys and values; per query row and head a
// running max m, denominator d, its peak p since the last exact evaluation, and the numerator
// already through out_proj, A = Σ_j exp(s_j - m)·u_j[h] (E floats), u_j[h] = W_o[:, hD:(h+1)D]·v_j,h. ----
class RetroactiveStream final : public ContinualStreamImpl, public RetroactiveWindows {
 public:
  // A row is recomputed exactly once its denominator drops below this fraction of its peak.
  static constexpr float kRecomputeFraction = 0.25f;

  RetroactiveStream(const ContinualMultiheadAttention& layer, int64_t batch)
      : ContinualStreamImpl(layer, batch, "RetroactiveMultiheadAttentionStream", {},
                            {{"q.", layer.sequence_len(), layer.d_model()},
                             {"k.", layer.sequence_len(), layer.d_model()},
                             {"v.", layer.sequence_len(), layer.d_model()}}),
        m_(batch * L_ * H_), d_(m_.size()), p_(m_.size()), a_(m_.size() * E_), s_new_(H_ * L_), s_old_(H_ * L_),
        w_(L_), c_(D_), k_old_(E_), x_(H_ * 3 * D_), y_(H_ * 3 * E_), m_new_(H_), d_new_(H_), redo_(L_ * H_),
        coef_(H_) {}

  Tensor step(const float* xq, const float* xk, const float* xv, int64_t C) override {
    project_chunk(xq, xk, xv, B_ * C);
    const int64_t C_out = outputs_for(C);
    // Sized for C outputs (what every chunk of C yields once the window is full), so the warm-up
    // already holds the steady-state buffer and later pushes allocate nothing.
    if (static_cast<int64_t>(out_.size()) < B_ * C * L_ * E_) out_.resize(B_ * C * L_ * E_);
    int64_t o = 0;
    for (int64_t c = 0; c < C; ++c) {
      const bool emits = seen_ + c >= L_ - 1;  // this token completes an output (of every row)
      for (int64_t b = 0; b < B_; ++b) {
        const int64_t row = (b * C + c) * E_;
        advance(b, pq_.data() + row, pk_.data() + row, pv_.data() + row,
                emits ? out_.data() + (b * C_out + o) * L_ * E_ : nullptr);
      }
      o += emits ? 1 : 0;
    }
    seen_ += C;
    return Tensor::view(Shape{B_, C_out, L_, E_}, out_.data());
  }

  std::unique_ptr<ContinualStreamImpl> clone() const override {
    return std::make_unique<RetroactiveStream>(*this);
  }

  Tensor window_outputs() const override { return windows_out_; }
  // push returns the newest window position (the layer's delay() = L - 1 is upstream's, for the
  // oldest position of the windows).
  int64_t delay() const override { return 0; }

 protected:
  // The windows of the chunk (step), kept for window_outputs(); push returns their newest position.
  Tensor push_chunk(const Tensor& chunk) override {
    windows_out_ = ContinualStreamImpl::push_chunk(chunk);  // (B, C_out, L, E)
    if (static_cast<int64_t>(newest_.size()) < B_ * chunk.dim(1) * E_) newest_.resize(B_ * chunk.dim(1) * E_);
    detail::newest_window_positions(windows_out_.data(), windows_out_.dim(0) * windows_out_.dim(1), L_, E_,
                                    newest_.data());
    return Tensor::view(Shape{B_, windows_out_.dim(1), E_}, newest_.data());
  }
  void save_extra(SafetensorsWriter& w) const override {
    w.add("acc.m", view(m_));
    w.add("acc.d", view(d_));
    w.add("acc.p", view(p_));
    w.add("acc.a", view(a_));
  }
  void restore_extra(const SafetensorsFile& f) override {
    const std::pair<const char*, std::vector<float>*> acc[] = {{"acc.m", &m_}, {"acc.d", &d_}, {"acc.p", &p_},
                                                                {"acc.a", &a_}};
    Tensor t[4];
    for (int i = 0; i < 4; ++i) {
      t[i] = f.tensor(acc[i].first);
      check_shape(t[i], {static_cast<int64_t>(acc[i].second->size())}, (std::string(name_) + "::restore").c_str(),
                  acc[i].first);
    }
    for (int i = 0; i < 4; ++i) std::copy(t[i].begin(), t[i].end(), acc[i].second->begin());
  }

 private:
  // Windows: L scaled queries, L keys, L values.
  SlidingWindow& qwin() { return window(0); }
  SlidingWindow& kwin() { return window(1); }
  SlidingWindow& vwin() { return window(2); }
  static Tensor view(const std::vector<float>& v) {
    return Tensor::view(Shape{static_cast<int64_t>(v.size())}, const_cast<float*>(v.data()));
  }
  // Accumulator index of the query token `token` of batch row b, head h.
  int64_t acc(int64_t b, int64_t token, int64_t h) const { return (b * L_ + token % L_) * H_ + h; }

  // Exact softmax of window row wi of batch row b, head h, over the current window: the head's
  // unnormalised context into c (D), its max into *m; returns its denominator.
  float evaluate(int64_t b, int64_t wi, int64_t h, float* c, float* m) {
    const int64_t n = kwin().count(b);
    attention_scores(qwin().rows(b) + wi * E_ + h * D_, kwin().rows(b) + h * D_, n, E_, D_, 1.f, w_.data());
    return attention_context_unnormalized(w_.data(), n, vwin().rows(b) + h * D_, E_, D_, c, m);
  }

  // One token (q scaled, k, v) of batch row b: push it; evaluate the new row over the window and put
  // the new value, the new row's context and the leaving value through the head slices of out_proj;
  // remove the leaving key from every row that stays and add the new key; recompute rows that lost
  // most of their mass. With out (L, E) non-null the token completes an output: each row is written
  // as soon as its accumulators are final (the pass that updates them also emits them), zeros while
  // this batch row's window still warms up.
  void advance(int64_t b, const float* q, const float* k, const float* v, float* out) {
    const int64_t seen = kwin().seen(b);
    const bool full = kwin().full(b);
    const int64_t R = full ? L_ - 1 : kwin().count(b);  // rows that stay: window rows 0 .. R-1 after the push
    const bool emit = out && R + 1 >= L_;               // the window is full after this token
    if (out && !emit) std::fill(out, out + L_ * E_, 0.f);
    // Per head, the rows put through out_proj: the new value, the new row's context, the leaving value.
    const int64_t nx = full ? 3 : 2;
    for (int64_t h = 0; h < H_; ++h) {
      std::copy(v + h * D_, v + (h + 1) * D_, x_.data() + h * 3 * D_);
      if (full) std::copy(vwin().rows(b) + h * D_, vwin().rows(b) + (h + 1) * D_, x_.data() + (h * 3 + 2) * D_);
    }
    if (full) std::copy(kwin().rows(b), kwin().rows(b) + E_, k_old_.begin());
    qwin().push(b, q);
    kwin().push(b, k);
    vwin().push(b, v);
    for (int64_t h = 0; h < H_; ++h) d_new_[h] = evaluate(b, R, h, x_.data() + (h * 3 + 1) * D_, &m_new_[h]);
    // y_ (H, 3, E): per head u_new, the new row's A, u_old.
    for (int64_t h = 0; h < H_; ++h)
      project_value_head(h, x_.data() + h * 3 * D_, nx, D_, y_.data() + h * 3 * E_, E_);

    // Scores of every staying row against the new (and the leaving) key, per head: (H, R).
    const float* Q = qwin().rows(b);
    for (int64_t h = 0; h < H_ && R > 0; ++h) {
      attention_scores(k + h * D_, Q + h * D_, R, E_, D_, 1.f, s_new_.data() + h * L_);
      if (full) attention_scores(k_old_.data() + h * D_, Q + h * D_, R, E_, D_, 1.f, s_old_.data() + h * L_);
    }
    // Row-major over the accumulators (a row's H x E block is contiguous). Per row: first the
    // scalars of every head (running max, denominator, peak, the weights of the new and the leaving
    // key), then one pass over the row's H x E accumulators that rescales, adds, subtracts and,
    // when the row is final, emits y = b_o + Σ_h A_h / d_h from the values still in registers.
    for (int64_t r = 0; r < R; ++r) {
      const int64_t token = seen - R + r;
      bool redo_row = false;
      for (int64_t h = 0; h < H_; ++h) {
        const int64_t i = acc(b, token, h);
        float m = m_[i], d = d_[i], p = p_[i], f = 1.f;
        const float sn = s_new_[h * L_ + r];
        if (sn > m) {  // new running max: rescale
          f = std::exp(m - sn);
          d *= f;
          p *= f;
          m = sn;
        }
        const float wn = std::exp(sn - m);
        d += wn;
        p = std::max(p, d);
        const float wo = full ? std::exp(s_old_[h * L_ + r] - m) : 0.f;
        d -= wo;
        // A row that lost most of its mass is recomputed exactly below (its A is not updated here).
        redo_[r * H_ + h] = full && !(d >= kRecomputeFraction * p);
        redo_row = redo_row || redo_[r * H_ + h];
        m_[i] = m;
        d_[i] = d;
        p_[i] = p;
        coef_[h] = {f, wn, wo};
      }
      float* y = emit && !redo_row ? out + r * E_ : nullptr;  // a row with a redo is emitted after it
      if (y) init_row(y);
      for (int64_t h = 0; h < H_; ++h) {
        if (redo_[r * H_ + h]) continue;
        const float f = coef_[h].f, wn = coef_[h].wn, wo = coef_[h].wo;
        const int64_t i = acc(b, token, h);
        const float* un = y_.data() + h * 3 * E_;
        const float* uo = full ? un + 2 * E_ : un;  // weight 0 when nothing leaves
        rescale_accumulate(a_.data() + i * E_, E_, f, un, wn, uo, wo, y, y ? 1.f / d_[i] : 0.f);
      }
      if (!redo_row) continue;
      for (int64_t h = 0; h < H_; ++h) {
        if (!redo_[r * H_ + h]) continue;
        const int64_t i = acc(b, token, h);
        d_[i] = p_[i] = evaluate(b, r, h, c_.data(), &m_[i]);
        project_value_head(h, c_.data(), 1, D_, a_.data() + i * E_, E_);
      }
      if (emit) emit_row(b, token, out + r * E_);
    }
    // The new row (window row R).
    for (int64_t h = 0; h < H_; ++h) {
      const int64_t i = acc(b, seen, h);
      std::copy(y_.data() + (h * 3 + 1) * E_, y_.data() + (h * 3 + 2) * E_, a_.data() + i * E_);
      m_[i] = m_new_[h];
      d_[i] = p_[i] = d_new_[h];
    }
    if (emit) emit_row(b, seen, out + R * E_);
  }

  // An output row before the heads are added: the out_proj bias, or zeros.
  void init_row(float* y) const {
    const float* bias = out_bias();
    if (bias)
      std::copy(bias, bias + E_, y);
    else
      std::fill(y, y + E_, 0.f);
  }

  // Output row of query token `token` of batch row b: y = b_o + Σ_h A_h / d_h.
  void emit_row(int64_t b, int64_t token, float* y) const {
    init_row(y);
    for (int64_t h = 0; h < H_; ++h) {
      const int64_t i = acc(b, token, h);
      const float inv = 1.f / d_[i];
      const float* A = a_.data() + i * E_;
      for (int64_t e = 0; e < E_; ++e) y[e] += A[e] * inv;
    }
  }

  // Per head of the row being updated: accumulator rescale f, weights of the new and the leaving key.
  struct RowCoef {
    float f, wn, wo;
  };

  std::vector<float> m_, d_, p_, a_;  // (B, L, H) and (B, L, H, E), slot = token % L
  std::vector<float> s_new_, s_old_;  // (H, L) scores of the staying rows
  std::vector<float> w_, c_, k_old_;  // (L) softmax weights, (D) a head's context, (E) the leaving key
  std::vector<float> x_, y_;          // (H, 3, D) rows put through out_proj per head, (H, 3, E) results
  std::vector<float> m_new_, d_new_;  // (H) the new row's max and denominator
  std::vector<uint8_t> redo_;         // (L, H) rows to recompute
  std::vector<RowCoef> coef_;         // (H)
  std::vector<float> out_;            // (B, C_out, L, E) outputs
  std::vector<float> newest_;         // (B, C_out, E): out_'s newest window positions (push)
  Tensor windows_out_;                // view of out_ as the last push left it
};

}  // namespace

std::unique_ptr<ContinualStreamImpl> detail::make_retroactive_stream(const ContinualMultiheadAttention& layer,
                                                                     int64_t batch) {
  return std::make_unique<RetroactiveStream>(layer, batch);
}

}  // namespace tokenmix
