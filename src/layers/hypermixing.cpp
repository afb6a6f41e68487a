#include "tokenmix/layers/hypermixing.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "tokenmix/core/threads.h"
#include "tokenmix/kernels/activations.h"
#include "tokenmix/kernels/layer_norm.h"
#include "tokenmix/kernels/linear.h"

namespace tokenmix {

namespace {

// Multiplies row i of rows (B·T, E) by 0 where key_padding_mask (B, T) is set: 0·NaN = NaN, as
// upstream's x * mask.
void zero_padded_rows(const Mask& key_padding_mask, int64_t E, float* rows) {
  for (int64_t i = 0; i < key_padding_mask.numel(); ++i)
    if (key_padding_mask.data()[i])
      for (int64_t c = 0; c < E; ++c) rows[i * E + c] *= 0.f;
}

// The float32 sinusoidal table of SpeechBrain's PositionalEncoding (max_length, E):
// pe[p, 2i] = sin(p·den_i), pe[p, 2i+1] = cos(p·den_i), den_i = exp(f32(2i)·f32(-ln(1e4)/E)).
Tensor sinusoidal_table(int64_t max_length, int64_t E) {
  Tensor pe{Shape{max_length, E}};
  const float c = static_cast<float>(-(std::log(10000.0) / static_cast<double>(E)));
  for (int64_t i = 0; i < E / 2; ++i) {
    const float den = std::exp(static_cast<float>(2 * i) * c);
    for (int64_t p = 0; p < max_length; ++p) {
      const float arg = static_cast<float>(p) * den;
      pe.at(p, 2 * i) = std::sin(arg);
      pe.at(p, 2 * i + 1) = std::cos(arg);
    }
  }
  return pe;
}

}  // namespace

void HyperMixingOptions::validate() const {
  const char* fn = "HyperMixing";
  check(input_output_dim >= 2, fn, ": input_output_dim: expected >= 2, got ", input_output_dim);
  check(input_output_dim % 2 == 0, fn, ": input_output_dim: expected an even size (sinusoidal positional ",
        "encoding), got ", input_output_dim);
  check(num_heads >= 1, fn, ": num_heads: expected >= 1, got ", num_heads);
  check(input_output_dim % num_heads == 0, fn, ": input_output_dim (", input_output_dim,
        ") must be divisible by num_heads (", num_heads, ")");
  check(hypernet_size >= 1, fn, ": hypernet_size: expected >= 1, got ", hypernet_size);
  check(hypernet_size % num_heads == 0, fn, ": hypernet_size (", hypernet_size,
        ") must be divisible by num_heads (", num_heads, ")");
  check_range(max_length, 1, limits::kMaxTokens, fn, "max_length");
  check_range(input_output_dim, 2, limits::kMaxFeatures, fn, "input_output_dim");
  check_range(hypernet_size, 1, limits::kMaxFeatures, fn, "hypernet_size");
}

HyperMixing::HyperMixing(const HyperMixingOptions& o, const StateDict& state_dict)
    : E_(o.input_output_dim), H_(o.num_heads), max_length_(o.max_length), tied_(o.tied) {
  const char* fn = "HyperMixing";
  o.validate();
  d_ = E_ / H_;
  K_ = o.fix_tm_hidden_size ? o.hypernet_size : o.hypernet_size / H_;

  WeightReader r(state_dict, fn);
  const Shape w1{H_, d_, d_}, b1{H_, d_}, w2{H_, K_, d_}, b2{H_, K_};
  const char* keys[4] = {"fc1_weights", "fc1_biases", "fc2_weights", "fc2_biases"};
  const Shape* shapes[4] = {&w1, &b1, &w2, &b2};
  // The four tensors of hypernetwork prefix (absent ones empty when optional).
  auto take_gen = [&](const std::string& p, bool optional) {
    std::array<Tensor, 4> t;
    for (int i = 0; i < 4; ++i)
      t[i] = optional ? r.take_optional(p + keys[i], *shapes[i]) : r.take(p + keys[i], *shapes[i]);
    return t;
  };
  const std::array<Tensor, 4> g1 = take_gen("hyper.w1_gen.", false), g2 = take_gen("hyper.w2_gen.", tied_);
  ln_w_ = r.take("layer_norm.weight", Shape{E_});
  ln_b_ = r.take("layer_norm.bias", Shape{E_});
  const Tensor pe = r.take_optional("positional_encoding.pe", Shape{1, max_length_, E_});
  r.finish();

  // Per-head projections viewing the loaded tensors.
  auto heads = [&](const std::array<Tensor, 4>& t) {
    Generator g;
    for (int64_t h = 0; h < H_; ++h) {
      // The token mixing reads both float32 matrices too (fc1 in the stream's positional table,
      // fc2 in the factored products).
      g.fc1.emplace_back(t[0][h], t[1][h], o.linear, KeepWeights::kAlsoFloat32);
      g.fc2.emplace_back(t[2][h], t[3][h], o.linear, KeepWeights::kAlsoFloat32);
    }
    return g;
  };
  gen1_ = heads(g1);
  if (tied_) {
    // Upstream's w2_gen is the w1_gen module: the aliased entries must hold the same values.
    for (int i = 0; i < 4; ++i) {
      if (g2[i].empty()) continue;
      check(std::equal(g1[i].begin(), g1[i].end(), g2[i].begin()), fn, ": state_dict: tied = true but 'hyper.w2_gen.",
            keys[i], "' differs from 'hyper.w1_gen.", keys[i],
            "' (a tied checkpoint stores one hypernetwork under both keys)");
    }
    gen2_ = gen1_;
  } else {
    gen2_ = heads(g2);
  }
  pe_ = pe.empty() ? sinusoidal_table(max_length_, E_) : pe.reshape(Shape{max_length_, E_});
}

void HyperMixing::hidden(const Generator& g, const float* z, int64_t rows, float* G) const {
  // Heads are independent: one per work item (the GEMMs inside run on one thread each).
  parallel_for(
      H_, rows > 1,
      [&](int64_t h) {
        float* gh = G + h * rows * d_;
        g.fc1[h].apply(z + h * rows * d_, rows, d_, gh, d_);
        gelu_erf(gh, rows * d_);
      },
      Schedule::kDynamic);
}

void HyperMixing::generated_row(const Generator& g, int64_t h, const float* g_row, float* w) const {
  g.fc2[h].apply(g_row, 1, d_, w, K_);
}

void HyperMixing::mixing_hidden(int64_t h, const float* x, int64_t ldx, const float* G1, int64_t ldg, int64_t rows,
                                float* P, float* R) const {
  // P (d, d) = x̃_hᵀ·G1_h over the tokens.
  gemm_tn(x, ldx, G1, ldg, /*b_transposed=*/false, P, d_, d_, d_, rows);
  // R (d, K) = P·C1_hᵀ + (x̃_hᵀ·1)·γ1_hᵀ, then GELU.
  gemm(P, d_, gen1_.fc2[h].weight().data(), d_, /*b_transposed=*/true, R, K_, d_, K_, d_);
  float* colsum = P;  // P is consumed: reuse its first row for x̃_hᵀ·1
  std::fill(colsum, colsum + d_, 0.f);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < d_; ++i) colsum[i] += x[t * ldx + i];
  const float* gamma = gen1_.fc2[h].bias().data();
  for (int64_t i = 0; i < d_; ++i)
    for (int64_t k = 0; k < K_; ++k) R[i * K_ + k] += colsum[i] * gamma[k];
  gelu_erf(R, d_ * K_);
}

bool HyperMixing::forms_w2() const { return 2 * K_ <= d_; }

int64_t HyperMixing::mixing_scratch(int64_t rows) const {
  return forms_w2() ? std::max(d_ * d_ + d_, rows * K_) : d_ * d_ + d_;
}

void HyperMixing::mixing_output(int64_t h, const float* R, const float* G2, int64_t ldg, int64_t rows, float* M,
                                float* out, int64_t ldo) const {
  const float* C2 = gen2_.fc2[h].weight().data();  // (K, d)
  const float* gamma = gen2_.fc2[h].bias().data();
  if (forms_w2()) {
    // Upstream's order: W2_h (rows, K) = G2_h·C2_hᵀ + γ2_h, then out = W2_h·Rᵀ. Cheaper when 2K <= d,
    // and it keeps each token's output a combination of K generated scalars rounded once: at K = 1
    // the output row is s·g, whose scalar s the final LayerNorm divides out (the factored form below
    // rounds every channel separately, and LayerNorm amplifies that where s nearly cancels).
    gen2_.fc2[h].apply(G2, rows, ldg, M, K_);
    gemm(M, K_, R, K_, /*b_transposed=*/true, out, ldo, rows, d_, K_);
    return;
  }
  // M (d, d) = C2_hᵀ·Rᵀ and c (d) = R·γ2_h (stored after M).
  gemm_tn(C2, d_, R, K_, /*b_transposed=*/true, M, d_, d_, d_, K_);
  float* c = M + d_ * d_;
  gemv(R, K_, false, gamma, c, d_, K_);
  // out = G2_h·M + 1·cᵀ.
  for (int64_t t = 0; t < rows; ++t) std::copy(c, c + d_, out + t * ldo);
  gemm(G2, ldg, M, d_, /*b_transposed=*/false, out, ldo, rows, d_, d_, 1.f, 1.f);
}

void HyperMixing::layer_norm(const float* o, int64_t rows, float* y) const {
  tokenmix::layer_norm(o, rows, E_, ln_w_.data(), ln_b_.data(), 1e-5f, y);
}

Tensor HyperMixing::forward(const Tensor& x, const Mask& key_padding_mask, Tensor* attn_weights) const {
  const char* fn = "HyperMixing::forward";
  check_shape(x, {-1, -1, E_}, fn, "x", {"B", "T", "E"});
  const int64_t B = x.dim(0), T = x.dim(1);
  check(B >= 1 && T >= 1, fn, ": x: expected B >= 1 and T >= 1, got shape ", x.shape());
  check(T <= max_length_, fn, ": x: expected T <= max_length (", max_length_, "), got T = ", T,
        " (upstream raises RuntimeError: The size of tensor a (", T, ") must match the size of tensor b (",
        max_length_, ") at non-singleton dimension 1)");
  const bool masked = !key_padding_mask.empty();
  if (masked) check_shape(key_padding_mask, {B, T}, fn, "key_padding_mask", {"B", "T"});

  // Scratch from the layer's pool, grown only: a forward allocates (and page-faults) no large
  // buffers after the first call of its size but its output. Slots: 0 z, 1 G1, 2 G2, 3 o, 4 x̃.
  const WorkspacePool::Lease ws = pool_.acquire();
  const int64_t n = B * T * E_;
  // x̃ = x ⊙ m (a copy only when masked) and the hypernetwork input z = x̃ + pe[:T].
  const float* xt = x.data();
  if (masked) {
    float* copy = ws->floats(4, n);
    std::copy(x.begin(), x.end(), copy);
    zero_padded_rows(key_padding_mask, E_, copy);
    xt = copy;
  }
  // zp is head-major (H, B·T, d): head h's slice of token r at zp[(h·B·T + r)·d].
  float* zp = ws->floats(0, n);
  const int64_t BT = B * T;
  parallel_for(BT, BT >= threshold::kRows, [&](int64_t r) {
    const float* xr = xt + r * E_;
    const float* pr = pe_.data() + (r % T) * E_;
    for (int64_t h = 0; h < H_; ++h) {
      float* zr = zp + (h * BT + r) * d_;
      for (int64_t c = 0; c < d_; ++c) zr[c] = xr[h * d_ + c] + pr[h * d_ + c];
    }
  });

  // The hypernetworks' hidden layers G1, G2 (H, B·T, d). Their last layers are applied inside the
  // token mixing (mixing_hidden / mixing_output), so the generated W1, W2 (B·T, H·K) never exist.
  float* g1 = ws->floats(1, n);
  hidden(gen1_, zp, B * T, g1);
  float* g2 = g1;
  if (!tied_) {
    g2 = ws->floats(2, n);
    hidden(gen2_, zp, B * T, g2);
  }

  // Token mixing per (b, h): R = GELU(x̃ᵀ·W1) (d x K), o = W2·Rᵀ (T x d). The (b, h) pairs are
  // independent, of equal cost: one per work item (the GEMMs inside then run on one thread each),
  // each thread with a workspace of its own for R (slot 0) and the mixing scratch (slot 1).
  float* o = ws->floats(3, n);  // the H column slices of d cover every row
  parallel_for_workspaces(
      B * H_, true, worker_pool_,
      [&](int64_t w, Workspace& mine) {
        const int64_t b = w / H_, h = w % H_;
        float* R = mine.floats(0, d_ * K_);
        float* P = mine.floats(1, mixing_scratch(T));
        const int64_t row0 = b * T * E_ + h * d_, hidden0 = (h * BT + b * T) * d_;
        mixing_hidden(h, xt + row0, E_, g1 + hidden0, d_, T, P, R);
        mixing_output(h, R, g2 + hidden0, d_, T, P, o + row0, E_);
      });
  // Upstream zeroes the generated rows of padded tokens: their W1 rows meet zero x̃ rows anyway, and
  // their W2 rows make their o rows zero.
  if (masked) zero_padded_rows(key_padding_mask, E_, o);
  Tensor y = Tensor::uninitialized(Shape{B, T, E_});
  layer_norm(o, B * T, y.data());
  if (attn_weights) *attn_weights = Tensor{Shape{B, T, T}};
  return y;
}

Tensor HyperMixing::forward(const Tensor& x, const Mask& key_padding_mask) const {
  return forward(x, key_padding_mask, nullptr);
}

void HyperMixing::check_stream_options(const StreamOptions& options, const char* fn) const {
  check(options.window >= 1 && options.window <= max_length_, fn,
        ": options.window: expected 1 <= window <= max_length (", max_length_, "), got ", options.window,
        " (HyperMixing pools over the whole sequence, so it streams over a sliding window of this many tokens)");
  check(options.position >= -1 && options.position < options.window, fn,
        ": options.position: expected -1 (last) or 0 <= position < window (", options.window, "), got ",
        options.position);
}

Tensor HyperMixing::stream_reference(const Tensor& x, const StreamOptions& options) const {
  const char* fn = "HyperMixing::stream_reference";
  check_stream_options(options, fn);
  check_shape(x, {-1, -1, E_}, fn, "x", {"B", "T", "E"});
  return sliding_window_reference(x, options, [this](const Tensor& w) { return forward(w); });
}

int64_t HyperMixing::weight_bytes() const {
  int64_t bytes = tensor_bytes(ln_w_) + tensor_bytes(ln_b_) + tensor_bytes(pe_);
  for (const Generator* g : {&gen1_, tied_ ? nullptr : &gen2_})  // a tied gen2_ shares gen1_'s
    if (g)
      for (const auto* layer : {&g->fc1, &g->fc2})
        for (const Linear& l : *layer) bytes += l.weight_bytes();
  return bytes;
}

std::unique_ptr<Stream> HyperMixing::open_stream(int64_t batch, const StreamOptions& options) const {
  return std::make_unique<HyperMixingStream>(*this, batch, options);
}

// ---------------------------------------------------------------------------------------------------
// HyperMixingStream

const StreamOptions& HyperMixingStream::checked(const HyperMixing& layer, int64_t batch,
                                              const StreamOptions& options) {
  check_range(batch, 1, limits::kMaxBatch, "HyperMixing::open_stream", "batch");
  layer.check_stream_options(options, "HyperMixing::open_stream");
  return options;
}

HyperMixingStream::HyperMixingStream(const HyperMixing& layer, int64_t batch, const StreamOptions& options)
    : WindowedStream("HyperMixingStream", batch, checked(layer, batch, options), layer.E_, 2 * layer.E_,
                     {layer.H_, layer.K_, layer.tied_ ? 1 : 0}, "batch, E, H, K, tied, window, position"),
      layer_(layer), E_(layer.E_), H_(layer.H_), d_(layer.d_), K_(layer.K_) {
  const int64_t L = length_;
  // Position part of hypernetwork 1's layer 1: Q[j] = A1·pe[j] + α1 for window positions j < L.
  pos_table_.assign(static_cast<size_t>(L * E_), 0.f);
  const auto& g = layer.gen1_;
  for (int64_t h = 0; h < H_; ++h)
    g.fc1[h].apply(layer.pe_.data() + h * d_, L, E_, pos_table_.data() + h * d_, E_);
  hidden_.assign(static_cast<size_t>(H_ * L * d_), 0.f);
  p_.assign(static_cast<size_t>(H_ * d_ * d_), 0.f);
  s_.assign(static_cast<size_t>(H_ * d_ * K_), 0.f);
  w2_.assign(static_cast<size_t>(H_ * K_), 0.f);
  z_.assign(static_cast<size_t>(E_), 0.f);
  h2_.assign(static_cast<size_t>(E_), 0.f);
  o_.assign(static_cast<size_t>(E_), 0.f);
}

void HyperMixingStream::stage(const float* x, int64_t n, float* rows) {
  const int64_t W = 2 * E_;
  for (int64_t r = 0; r < n; ++r) std::memcpy(rows + r * W, x + r * E_, sizeof(float) * E_);
  const auto& g1 = layer_.gen1_;
  for (int64_t h = 0; h < H_; ++h)
    linear_raw(x + h * d_, n, d_, E_, g1.fc1[h].weight().data(), nullptr, d_, rows + E_ + h * d_, W);  // A1·x, no bias
}

void HyperMixingStream::window_output(int64_t, const float* R, int64_t, float* y) {
  // R: (L, 2E) oldest first, [x | A1·x].
  const int64_t W = 2 * E_, L = length_, P = position_;
  const auto& g1 = layer_.gen1_;
  if (!layer_.tied_) {
    // Hypernetwork 2's hidden layer only for the emitted token (window position P): z = x_P + pe[P].
    const float* xp = R + P * W;
    const float* pe = layer_.pe_.data() + P * E_;
    for (int64_t c = 0; c < E_; ++c) z_[c] = xp[c] + pe[c];
    layer_.hidden(layer_.gen2_, z_.data(), 1, h2_.data());
  }
  // Heads are independent (each has its own scratch): one per work item.
  parallel_for(H_, true, [&](int64_t h) {
    float* hidden = hidden_.data() + h * L * d_;
    float* p = p_.data() + h * d_ * d_;
    float* s = s_.data() + h * d_ * K_;
    float* w2 = w2_.data() + h * K_;
    // Layer 1 of hypernetwork 1 from the cached A1·x and the position table, then GELU.
    for (int64_t j = 0; j < L; ++j) {
      const float* a = R + j * W + E_ + h * d_;
      const float* q = pos_table_.data() + j * E_ + h * d_;
      float* out = hidden + j * d_;
      for (int64_t i = 0; i < d_; ++i) out[i] = a[i] + q[i];
    }
    gelu_erf(hidden, L * d_);
    // GELU(xᵀ·W1) (d, K) over the window, W1 factored as in forward.
    layer_.mixing_hidden(h, R + h * d_, W, hidden, d_, L, p, s);
    // o_h (d) = GELU(S)·W2[P], with the generated row W2[P] (K) of this head.
    if (layer_.tied_)
      layer_.generated_row(g1, h, hidden + P * d_, w2);
    else
      layer_.generated_row(layer_.gen2_, h, h2_.data() + h * d_, w2);
    linear_raw(w2, 1, K_, K_, s, nullptr, d_, o_.data() + h * d_, d_);
  });
  layer_.layer_norm(o_.data(), 1, y);
}

}  // namespace tokenmix
