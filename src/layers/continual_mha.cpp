#include "tokenmix/layers/continual_mha.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "tokenmix/core/checked.h"
#include "tokenmix/core/threads.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/kernels/permute.h"
#include "tokenmix/streaming/sliding_window.h"

namespace tokenmix {

namespace detail {

// The stream state shared by forward_step() and open_stream(). step() takes C tokens of B rows as
// three (B, C, E) blocks (query, key, value inputs) and returns the outputs the chunk completes.
class ContinualStreamImpl : public Stream {
 public:
  // A per-row window of the stream state (its length and row width) saved under "<prefix>".
  struct WindowSpec {
    const char* prefix;
    int64_t length, width;
  };
  // config_extra: values appended to the saved config (batch, E, H, L, ...); windows: the state
  // windows, in the order they are saved.
  ContinualStreamImpl(const ContinualMultiheadAttention& layer, int64_t batch, const char* name,
                      std::vector<int64_t> config_extra, std::initializer_list<WindowSpec> windows)
      : layer_(layer), name_(name), push_fn_(std::string(name) + "::push"), B_(batch), E_(layer.E_),
        H_(layer.H_), D_(layer.D_), L_(layer.L_), config_{B_, E_, H_, L_} {
    config_.insert(config_.end(), config_extra.begin(), config_extra.end());
    for (const auto& w : windows) {
      prefixes_.push_back(w.prefix);
      windows_.emplace_back(batch, w.length, w.width);
    }
  }
  virtual Tensor step(const float* xq, const float* xk, const float* xv, int64_t C) = 0;
  virtual std::unique_ptr<ContinualStreamImpl> clone() const = 0;
  int64_t batch() const { return B_; }
  // Throws Error when C more tokens would take the token count past limits::kMaxStreamTokens.
  void check_room(int64_t C, const char* fn) const {
    check(seen_ <= limits::kMaxStreamTokens - C, fn, ": the stream has seen ", seen_, " tokens; ", C,
          " more would pass the limit of ", limits::kMaxStreamTokens, " (reset the stream)");
  }

  void reset() override {
    for (auto& w : windows_) w.reset();
    seen_ = 0;
  }
  void reset_row(int64_t b) override {
    check(b >= 0 && b < B_, name_, "::reset_row: b: expected 0 <= b < ", B_, ", got ", b);
    for (auto& w : windows_) w.reset_row(b);
  }
  // State: header config (batch, E, H, L, ...), "seen", the windows under their prefixes, then
  // whatever save_extra adds.
  std::string state_name() const override { return name_; }
  std::vector<int64_t> state_config() const override { return config_; }
  std::string state_config_names() const override { return "batch, E, H, L, ..."; }
  void save_state(SafetensorsWriter& w) const override {
    w.add_int64s("seen", {seen_});
    for (size_t i = 0; i < windows_.size(); ++i) windows_[i].save(w, prefixes_[i]);
    save_extra(w);
  }
  // Checks everything before it changes anything: a failed restore leaves the stream as it was.
  void restore_state(const SafetensorsFile& f) override {
    const std::string fn = std::string(name_) + "::restore";
    const auto seen = f.int64s("seen");
    check(seen.size() == 1 && seen[0] >= 0 && seen[0] <= limits::kMaxStreamTokens, fn, ": ", f.path(),
          ": 'seen': expected one count in [0, ", limits::kMaxStreamTokens, "]");
    std::vector<SlidingWindow> windows;
    for (size_t i = 0; i < windows_.size(); ++i) {
      windows.push_back(windows_[i].restored(f, prefixes_[i]));
      // The windows advance together, and a row's count restarts at reset_row: <= the stream's.
      for (int64_t b = 0; b < B_; ++b)
        check(windows[i].seen(b) == windows[0].seen(b) && windows[i].seen(b) <= seen[0], fn, ": ", f.path(), ": '",
              prefixes_[i], "seen' row ", b, " (", windows[i].seen(b), ") does not match '", prefixes_[0],
              "seen' (", windows[0].seen(b), ") or exceeds 'seen' (", seen[0], ")");
    }
    restore_extra(f);  // all or nothing
    windows_ = std::move(windows);
    seen_ = seen[0];
  }

 protected:
  Tensor push_chunk(const Tensor& chunk) override {
    // (checked without building the argument vectors of check_shape: push allocates nothing)
    if (chunk.ndim() != 3 || chunk.dim(0) != B_ || chunk.dim(2) != E_)
      check_shape(chunk, {B_, -1, E_}, push_fn_.c_str(), "chunk", {"B", "C", "E"});
    check(chunk.dim(1) >= 1, push_fn_, ": chunk: expected at least 1 token, got shape ", chunk.shape());
    check_room(chunk.dim(1), push_fn_.c_str());
    return step(chunk.data(), chunk.data(), chunk.data(), chunk.dim(1));
  }
  // State beyond the windows and the token count (saved after them). restore_extra is all or
  // nothing: it checks everything it reads before it changes anything.
  virtual void save_extra(SafetensorsWriter&) const {}
  virtual void restore_extra(const SafetensorsFile&) {}
  // Window i of the constructor's list.
  SlidingWindow& window(size_t i) { return windows_[i]; }
  const SlidingWindow& window(size_t i) const { return windows_[i]; }
  // Outputs completed by a chunk of C tokens: those whose index since open/reset() is >= L-1.
  int64_t outputs_for(int64_t C) const { return std::max<int64_t>(0, seen_ + C - std::max(seen_, L_ - 1)); }
  // Projects the chunk: q (scaled by 1/sqrt(D)), k, v into the scratch buffers.
  void project_chunk(const float* xq, const float* xk, const float* xv, int64_t rows) {
    const int64_t n = rows * E_;
    if (static_cast<int64_t>(pq_.size()) < n)
      for (auto* buf : {&pq_, &pk_, &pv_}) buf->resize(n);
    layer_.project(0, xq, rows, pq_.data());
    layer_.project(1, xk, rows, pk_.data());
    layer_.project(2, xv, rows, pv_.data());
    for (int64_t i = 0; i < n; ++i) pq_[i] *= layer_.scale_;
  }
  void project_out(const float* ctx, int64_t rows, float* y) const { layer_.project_out(ctx, rows, y); }
  void project_value_head(int64_t h, const float* x, int64_t rows, int64_t ldx, float* y, int64_t ldy) const {
    layer_.project_value_head(h, x, rows, ldx, y, ldy);
  }
  const float* out_bias() const { return layer_.b_o_.empty() ? nullptr : layer_.b_o_.data(); }

  const ContinualMultiheadAttention& layer_;
  const char* name_;
  const std::string push_fn_;
  const int64_t B_, E_, H_, D_, L_;
  int64_t seen_ = 0;                  // tokens pushed since open/reset()
  std::vector<float> pq_, pk_, pv_;  // (B, C, E) projections, grown only

 private:
  std::vector<int64_t> config_;         // (batch, E, H, L, config_extra...)
  std::vector<const char*> prefixes_;  // state-file prefix of each window
  std::vector<SlidingWindow> windows_;
};

}  // namespace detail

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
    AttentionShape s;
    s.batch = 1;
    s.heads = H_;
    s.head_dim = D_;
    s.q_len = 1;
    s.k_len = L_;
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

 private:
  // Windows: a delay line of query_delay + 1 scaled queries, L keys, L values.
  SlidingWindow& qwin() { return window(0); }
  SlidingWindow& kwin() { return window(1); }
  SlidingWindow& vwin() { return window(2); }
  std::vector<float> ctx_, out_;
  std::vector<uint8_t> ready_;
};

// ---- Retroactive stream: windows of scaled queries, keys and values; per query row and head a
// running max m, denominator d, its peak p since the last exact evaluation, and the numerator
// already through out_proj, A = Σ_j exp(s_j - m)·u_j[h] (E floats), u_j[h] = W_o[:, hD:(h+1)D]·v_j,h. ----
class RetroactiveStream final : public ContinualStreamImpl {
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

 protected:
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
        const float f = coef_[h].f, wn = coef_[h].wn, wo = coef_[h].wo;  // (clang 14: no structured bindings in omp simd)
        const int64_t i = acc(b, token, h);
        float* A = a_.data() + i * E_;
        const float* un = y_.data() + h * 3 * E_;
        const float* uo = full ? un + 2 * E_ : un;  // weight 0 when nothing leaves
        if (y) {
          const float inv = 1.f / d_[i];
#pragma omp simd
          for (int64_t e = 0; e < E_; ++e) {
            const float a = f * A[e] + (wn * un[e] - wo * uo[e]);
            A[e] = a;
            y[e] += a * inv;
          }
        } else {
#pragma omp simd
          for (int64_t e = 0; e < E_; ++e) A[e] = f * A[e] + (wn * un[e] - wo * uo[e]);
        }
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
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Layer

ContinualMultiheadAttention::ContinualMultiheadAttention(const char* cls, const ContinualMhaOptions& o,
                                                         bool batch_first_default, const StateDict& sd)
    : cls_(cls), opt_(o), batch_first_(o.batch_first.value_or(batch_first_default)), E_(o.embed_dim),
      H_(o.num_heads), D_(o.num_heads > 0 ? o.embed_dim / o.num_heads : 0), L_(o.sequence_len),
      kdim_(o.kdim > 0 ? o.kdim : o.embed_dim), vdim_(o.vdim > 0 ? o.vdim : o.embed_dim) {
  check_range(E_, 1, limits::kMaxFeatures, cls, "embed_dim");
  check(H_ >= 1, cls, ": num_heads: expected >= 1, got ", H_);
  check(E_ % H_ == 0, cls, ": embed_dim (", E_, ") must be divisible by num_heads (", H_, ")");
  check_range(L_, 1, limits::kMaxTokens, cls, "sequence_len");
  check_range(o.kdim, 0, limits::kMaxFeatures, cls, "kdim (0 = embed_dim)");
  check_range(o.vdim, 0, limits::kMaxFeatures, cls, "vdim (0 = embed_dim)");
  check(o.dropout >= 0.0 && o.dropout < 1.0, cls, ": dropout: expected 0 <= p < 1, got ", o.dropout);
  check(!o.embed_dim_second || batch_first_, cls,
        ": embed_dim_second: requires batch_first=true (upstream's seq-first + embed_dim_second layouts are "
        "inconsistent)");
  scale_ = 1.f / std::sqrt(static_cast<float>(D_));
  WeightReader r(sd, cls);
  if (kdim_ == E_ && vdim_ == E_) {
    const Tensor w = r.take("in_proj_weight", Shape{3 * E_, E_});
    if (!w.empty()) {
      w_q_ = w.reshape(Shape{3, E_, E_})[0];
      w_k_ = w.reshape(Shape{3, E_, E_})[1];
      w_v_ = w.reshape(Shape{3, E_, E_})[2];
    }
  } else {
    w_q_ = r.take("q_proj_weight", Shape{E_, E_});
    w_k_ = r.take("k_proj_weight", Shape{E_, kdim_});
    w_v_ = r.take("v_proj_weight", Shape{E_, vdim_});
  }
  if (o.bias) {
    const Tensor b = r.take("in_proj_bias", Shape{3 * E_});
    if (!b.empty()) {
      b_q_ = b.reshape(Shape{3, E_})[0];
      b_k_ = b.reshape(Shape{3, E_})[1];
      b_v_ = b.reshape(Shape{3, E_})[2];
    }
  }
  w_o_ = r.take("out_proj.weight", Shape{E_, E_});
  if (o.bias) b_o_ = r.take("out_proj.bias", Shape{E_});
  if (o.add_bias_kv) {
    bias_k_ = r.take("bias_k", Shape{1, 1, E_});
    bias_v_ = r.take("bias_v", Shape{1, 1, E_});
  }
  r.finish();
}

ContinualMultiheadAttention::~ContinualMultiheadAttention() = default;

void ContinualMultiheadAttention::project(int part, const float* x, int64_t rows, float* y) const {
  const Tensor& w = part == 0 ? w_q_ : part == 1 ? w_k_ : w_v_;
  const Tensor& b = part == 0 ? b_q_ : part == 1 ? b_k_ : b_v_;
  linear_raw(x, rows, w.dim(1), w.dim(1), w.data(), b.empty() ? nullptr : b.data(), E_, y, E_);
}

void ContinualMultiheadAttention::project_out(const float* ctx, int64_t rows, float* y) const {
  linear_raw(ctx, rows, E_, E_, w_o_.data(), b_o_.empty() ? nullptr : b_o_.data(), E_, y, E_);
}

void ContinualMultiheadAttention::project_value_head(int64_t h, const float* x, int64_t rows, int64_t ldx,
                                                     float* y, int64_t ldy) const {
  // y[r][e] = x[r] · W_o[e, hD:(h+1)D]: the single-query scores kernel with the E rows of the head's
  // W_o slice as keys. BLAS is slower here: sgemm packs the whole (E, D) slice for a few rows, and
  // sgemv over a 64-column slice runs below the register-blocked kernel.
  for (int64_t r = 0; r < rows; ++r) attention_scores(x + r * ldx, w_o_.data() + h * D_, E_, E_, D_, 1.f, y + r * ldy);
}


Tensor ContinualMultiheadAttention::forward_bf(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                               const Mask& kpm, const Mask& attn_mask, Tensor* attn_weights,
                                               const char* fn) const {
  const int64_t N = q_in.dim(0), T = q_in.dim(1), S = k_in.dim(1);
  check_shape(k_in, {N, -1, kdim_}, fn, "key", {"N", "S"});
  check_shape(v_in, {N, S, vdim_}, fn, "value", {"N", "S"});
  // Extra key/value rows: bias_k / bias_v, then a zero row (add_zero_attn), as PyTorch appends them.
  const int64_t extra = (opt_.add_bias_kv ? 1 : 0) + (opt_.add_zero_attn ? 1 : 0), S2 = S + extra;
  // Self-attention on the packed in_proj_weight (3E, E): one GEMM into (N, T, 3E), read through
  // strided views (row stride 3E), instead of three GEMMs.
  const bool packed = extra == 0 && q_in.data() == k_in.data() && k_in.data() == v_in.data() && kdim_ == E_ &&
                      vdim_ == E_ && w_k_.data() == w_q_.data() + E_ * E_ && w_v_.data() == w_q_.data() + 2 * E_ * E_ &&
                      (b_q_.empty() || (b_k_.data() == b_q_.data() + E_ && b_v_.data() == b_q_.data() + 2 * E_));
  Tensor q, k, v, qkv;
  int64_t ld = E_;
  if (packed) {
    const Tensor w = Tensor::view(Shape{3 * E_, E_}, const_cast<float*>(w_q_.data()));
    const Tensor b = b_q_.empty() ? Tensor{} : Tensor::view(Shape{3 * E_}, const_cast<float*>(b_q_.data()));
    qkv = linear(q_in, w, b, fn);
    ld = 3 * E_;
  } else {
    q = linear(q_in, w_q_, b_q_, fn);
    k = linear(k_in, w_k_, b_k_, fn);
    v = linear(v_in, w_v_, b_v_, fn);
  }
  if (extra) {
    const Tensor k0 = k, v0 = v;
    k = Tensor{Shape{N, S2, E_}};
    v = Tensor{Shape{N, S2, E_}};
    for (int64_t n = 0; n < N; ++n) {
      std::copy(k0.data() + n * S * E_, k0.data() + (n + 1) * S * E_, k.data() + n * S2 * E_);
      std::copy(v0.data() + n * S * E_, v0.data() + (n + 1) * S * E_, v.data() + n * S2 * E_);
      if (opt_.add_bias_kv) {
        std::copy(bias_k_.begin(), bias_k_.end(), k.data() + (n * S2 + S) * E_);
        std::copy(bias_v_.begin(), bias_v_.end(), v.data() + (n * S2 + S) * E_);
      }
    }
  }
  int64_t q0 = 0, Tq = T;
  if (single_output_ && opt_.single_output_forward) {
    const int64_t qi = opt_.query_index;
    check(qi >= -T && qi < T, fn, ": query_index ", qi, " is out of range for a query of ", T, " tokens");
    q0 = qi < 0 ? qi + T : qi;
    Tq = 1;
  }
  Mask keep;
  AttentionMask am;
  if (!kpm.empty() || !attn_mask.empty()) {
    if (!kpm.empty()) check_shape(kpm, {N, S}, fn, "key_padding_mask", {"N", "S"});
    if (!attn_mask.empty())
      check(attn_mask.ndim() == 2 && attn_mask.dim(0) == T && attn_mask.dim(1) == S, fn,
            ": attn_mask: expected a bool (T, S) = (", T, ", ", S, ") mask (per-head (N*H, T, S) masks are not "
            "supported), got shape ", attn_mask.shape());
    keep = Mask{Shape{N, Tq, S2}};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < Tq; ++i)
        for (int64_t j = 0; j < S2; ++j)
          keep.at(n, i, j) = j >= S || ((kpm.empty() || !kpm.at(n, j)) &&
                                        (attn_mask.empty() || !attn_mask.at(q0 + i, j)));
    am = AttentionMask{keep.data(), Tq * S2, S2, 1, 1};
  }
  AttentionShape s;
  s.batch = N;
  s.heads = H_;
  s.head_dim = D_;
  s.q_len = Tq;
  s.k_len = S2;
  s.scale = scale_;
  Tensor ctx = Tensor::uninitialized(Shape{N, Tq, E_});  // attention() writes every row
  Tensor probs;
  if (attn_weights) probs = Tensor{Shape{N, H_, Tq, S2}};
  const float* qp = packed ? qkv.data() : q.data();
  const float* kp = packed ? qkv.data() + E_ : k.data();
  const float* vp = packed ? qkv.data() + 2 * E_ : v.data();
  attention(s, HeadsView{qp + q0 * ld, T * ld, ld}, HeadsView{kp, S2 * ld, ld}, HeadsView{vp, S2 * ld, ld},
            keep.empty() ? nullptr : &am, HeadsOut{ctx.data(), Tq * E_, E_}, attn_weights ? probs.data() : nullptr);
  if (attn_weights) {
    Tensor avg{Shape{N, Tq, S2}};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H_; ++h)
        for (int64_t i = 0; i < Tq * S2; ++i) avg.data()[n * Tq * S2 + i] += probs.data()[(n * H_ + h) * Tq * S2 + i];
    for (auto& x : avg) x /= static_cast<float>(H_);
    *attn_weights = avg;
  }
  return linear(ctx, w_o_, b_o_, fn);
}

Tensor ContinualMultiheadAttention::to_batch_first(const Tensor& x, const char* fn, const char* arg,
                                                   int64_t width) const {
  if (opt_.embed_dim_second) {
    check_shape(x, {-1, width, -1}, fn, arg, {"N", "", "T"});
    return permute(x, {0, 2, 1});
  }
  if (!batch_first_) {
    check_shape(x, {-1, -1, width}, fn, arg, {"T", "N"});
    return permute(x, {1, 0, 2});
  }
  check_shape(x, {-1, -1, width}, fn, arg, {"N", "T"});
  return x;
}

Tensor ContinualMultiheadAttention::forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                            const Mask& key_padding_mask, const Mask& attn_mask,
                                            Tensor* attn_weights) const {
  const std::string fn = std::string(cls_) + "::forward";
  const Tensor q = to_batch_first(query, fn.c_str(), "query", E_);
  const Tensor k = key.empty() ? q : to_batch_first(key, fn.c_str(), "key", kdim_);
  const Tensor v = value.empty() ? q : to_batch_first(value, fn.c_str(), "value", vdim_);
  const Tensor y = forward_bf(q, k, v, key_padding_mask, attn_mask, attn_weights, fn.c_str());
  if (opt_.embed_dim_second) return permute(y, {0, 2, 1});
  if (!batch_first_) return permute(y, {1, 0, 2});
  return y;
}

Tensor ContinualMultiheadAttention::forward(const Tensor& x, const Mask& key_padding_mask) const {
  const std::string fn = std::string(cls_) + "::forward";
  check_shape(x, {-1, -1, E_}, fn.c_str(), "x", {"B", "T"});
  return forward_bf(x, x, x, key_padding_mask, Mask{}, nullptr, fn.c_str());
}

void ContinualMultiheadAttention::check_stream_options(const StreamOptions& options, const char* fn) const {
  check(options.left_context == 0, fn, ": options.left_context: expected 0 (the window is sequence_len = ", L_,
        "), got ", options.left_context);
  check(options.window == 0 || options.window == L_, fn, ": options.window: expected 0 or sequence_len = ", L_,
        ", got ", options.window);
  check(!opt_.add_bias_kv, fn, ": add_bias_kv=true cannot stream (upstream's step mode crashes); use forward()");
  check(!opt_.add_zero_attn, fn, ": add_zero_attn=true cannot stream (upstream's step mode asserts); use forward()");
  check(kdim_ == E_ && vdim_ == E_, fn, ": kdim/vdim != embed_dim (", kdim_, ", ", vdim_, " vs ", E_,
        ") cannot stream (upstream's step mode crashes); use forward()");
}

std::unique_ptr<Stream> ContinualMultiheadAttention::open_stream(int64_t batch, const StreamOptions& options) const {
  const std::string fn = std::string(cls_) + "::open_stream";
  check_stream_options(options, fn.c_str());
  check_range(batch, 1, limits::kMaxBatch, fn.c_str(), "batch");
  return make_stream(batch);
}

ContinualMultiheadAttention::Projected ContinualMultiheadAttention::project_all(const Tensor& x,
                                                                                const char* fn) const {
  check_shape(x, {-1, -1, E_}, fn, "x", {"B", "T"});
  return {linear(x, w_q_, b_q_, fn), linear(x, w_k_, b_k_, fn), linear(x, w_v_, b_v_, fn)};
}

void ContinualMultiheadAttention::clean_state() { state_.reset(); }

Tensor ContinualMultiheadAttention::run_steps(const Tensor& q, const Tensor& k, const Tensor& v, bool update_state,
                                              const char* fn) {
  const int64_t N = q.dim(0);
  check_stream_options(StreamOptions{}, fn);
  check(!state_ || state_->batch() == N, fn, ": query: batch size ", N, " differs from the ", state_ ? state_->batch() : 0,
        " rows of the step state; call clean_state() first");
  std::unique_ptr<detail::ContinualStreamImpl> scratch;
  detail::ContinualStreamImpl* impl = nullptr;
  if (update_state) {
    if (!state_) state_ = make_stream(N);
    impl = state_.get();
  } else {
    scratch = state_ ? state_->clone() : make_stream(N);
    impl = scratch.get();
  }
  const ThreadLimit limit(stream_threads(N * q.dim(1)));
  impl->check_room(q.dim(1), fn);
  return impl->step(q.data(), k.data(), v.data(), q.dim(1)).clone();
}

Tensor ContinualMultiheadAttention::forward_step(const Tensor& query, const Tensor& key, const Tensor& value,
                                                 bool update_state) {
  const std::string fn = std::string(cls_) + "::forward_step";
  check_shape(query, {-1, E_}, fn.c_str(), "query", {"N"});
  const Tensor& k = key.empty() ? query : key;
  const Tensor& v = value.empty() ? query : value;
  check_shape(k, {query.dim(0), E_}, fn.c_str(), "key", {"N"});
  check_shape(v, {query.dim(0), E_}, fn.c_str(), "value", {"N"});
  const Shape one{query.dim(0), 1, E_};
  const Tensor y = run_steps(query.reshape(one), k.reshape(one), v.reshape(one), update_state, fn.c_str());
  if (y.dim(1) == 0) return {};
  if (single_output_) return y.reshape(Shape{y.dim(0), E_});
  const Tensor w = y.reshape(Shape{y.dim(0), L_, E_});  // (N, L, E)
  if (opt_.embed_dim_second) return permute(w, {0, 2, 1});
  if (!batch_first_) return permute(w, {1, 0, 2});
  return w;
}

Tensor ContinualMultiheadAttention::forward_steps(const Tensor& query, const Tensor& key, const Tensor& value,
                                                  bool update_state) {
  const std::string fn = std::string(cls_) + "::forward_steps";
  const Tensor q = to_batch_first(query, fn.c_str(), "query", E_);
  const Tensor k = key.empty() ? q : to_batch_first(key, fn.c_str(), "key", E_);
  const Tensor v = value.empty() ? q : to_batch_first(value, fn.c_str(), "value", E_);
  check_shape(k, {q.dim(0), q.dim(1), E_}, fn.c_str(), "key", {"N", "T"});
  check_shape(v, {q.dim(0), q.dim(1), E_}, fn.c_str(), "value", {"N", "T"});
  check(q.dim(1) >= 1, fn, ": query: expected at least 1 token, got shape ", query.shape());
  const Tensor y = run_steps(q, k, v, update_state, fn.c_str());
  if (y.dim(1) == 0) return {};
  if (single_output_) {  // (N, T', E)
    if (opt_.embed_dim_second) return permute(y, {0, 2, 1});
    if (!batch_first_) return permute(y, {1, 0, 2});
    return y;
  }
  // (N, T', L, E)
  if (opt_.embed_dim_second) return permute(y, {0, 3, 1, 2});
  if (!batch_first_) return permute(y, {1, 2, 0, 3});
  return y;
}

// ---------------------------------------------------------------------------------------------
// SingleOutput

SingleOutputMultiheadAttention::SingleOutputMultiheadAttention(const ContinualMhaOptions& options,
                                                               const StateDict& state_dict)
    : ContinualMultiheadAttention("SingleOutputMultiheadAttention", options, true, state_dict) {
  single_output_ = true;
  check(options.query_index >= -L_ && options.query_index < L_, cls_, ": query_index: expected -", L_,
        " <= query_index < ", L_, " (sequence_len), got ", options.query_index);
}

int64_t SingleOutputMultiheadAttention::delay() const {
  const int64_t qi = opt_.query_index;
  return qi >= 0 ? L_ - qi - 1 : -qi - 1;
}

Tensor SingleOutputMultiheadAttention::stream_reference(const Tensor& x, const StreamOptions& options) const {
  const char* fn = "SingleOutputMultiheadAttention::stream_reference";
  check_stream_options(options, fn);
  const Projected p = project_all(x, fn);
  const int64_t B = x.dim(0), T = x.dim(1), T_out = std::max<int64_t>(T - L_ + 1, 0);
  Tensor ctx{Shape{B, T_out, E_}};
  if (T_out == 0) return ctx;
  // Output i (token t = i + L - 1) = query of token t - delay over keys t-L+1 .. t: the causal band
  // with query offset L - 1 and left context L.
  AttentionShape s;
  s.batch = B;
  s.heads = H_;
  s.head_dim = D_;
  s.q_len = T_out;
  s.k_len = T;
  s.scale = scale_;
  s.causal = true;
  s.query_offset = L_ - 1;
  s.left_context = L_;
  attention(s, HeadsView{p.q.data() + (L_ - 1 - delay()) * E_, T * E_, E_}, HeadsView{p.k.data(), T * E_, E_},
            HeadsView{p.v.data(), T * E_, E_}, nullptr, HeadsOut{ctx.data(), T_out * E_, E_});
  return linear(ctx, w_o_, b_o_, fn);
}

std::unique_ptr<detail::ContinualStreamImpl> SingleOutputMultiheadAttention::make_stream(int64_t batch) const {
  return std::make_unique<SingleOutputStream>(*this, batch);
}

// ---------------------------------------------------------------------------------------------
// Retroactive

RetroactiveMultiheadAttention::RetroactiveMultiheadAttention(const ContinualMhaOptions& options,
                                                             const StateDict& state_dict)
    : ContinualMultiheadAttention("RetroactiveMultiheadAttention", options, false, state_dict) {}

Tensor RetroactiveMultiheadAttention::stream_reference(const Tensor& x, const StreamOptions& options) const {
  const char* fn = "RetroactiveMultiheadAttention::stream_reference";
  check_stream_options(options, fn);
  const Projected p = project_all(x, fn);
  const int64_t B = x.dim(0), T = x.dim(1), T_out = std::max<int64_t>(T - L_ + 1, 0);
  Tensor ctx{Shape{B, T_out, L_, E_}};
  if (T_out == 0) return ctx;
  AttentionShape s;
  s.batch = B;
  s.heads = H_;
  s.head_dim = D_;
  s.q_len = L_;
  s.k_len = L_;
  s.scale = scale_;
  for (int64_t i = 0; i < T_out; ++i)  // window i = tokens i .. i + L - 1, every position a query
    attention(s, HeadsView{p.q.data() + i * E_, T * E_, E_}, HeadsView{p.k.data() + i * E_, T * E_, E_},
              HeadsView{p.v.data() + i * E_, T * E_, E_}, nullptr,
              HeadsOut{ctx.data() + i * L_ * E_, T_out * L_ * E_, E_});
  return linear(ctx, w_o_, b_o_, fn);
}

std::unique_ptr<detail::ContinualStreamImpl> RetroactiveMultiheadAttention::make_stream(int64_t batch) const {
  return std::make_unique<RetroactiveStream>(*this, batch);
}

}  // namespace tokenmix
