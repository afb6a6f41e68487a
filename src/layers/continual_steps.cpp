#include <string>

#include "continual_stream.h"
#include "tokenmix/core/threads.h"
#include "tokenmix/kernels/permute.h"
#include "tokenmix/layers/continual_mha.h"

namespace tokenmix {

ContinualSteps::ContinualSteps(const ContinualMultiheadAttention& layer) : layer_(layer) {}

ContinualSteps::~ContinualSteps() = default;

void ContinualSteps::clean_state() { state_.reset(); }

Tensor ContinualSteps::run(const Tensor& q, const Tensor& k, const Tensor& v, bool update_state,
                                              const char* fn) {
  const int64_t N = q.dim(0);
  layer_.check_stream_options(StreamOptions{}, fn);
  check(!state_ || state_->batch() == N, fn, ": query: batch size ", N, " differs from the ", state_ ? state_->batch() : 0,
        " rows of the step state; call clean_state() first");
  std::unique_ptr<detail::ContinualStreamImpl> scratch;
  detail::ContinualStreamImpl* impl = nullptr;
  if (update_state) {
    if (!state_) state_ = layer_.make_stream(N);
    impl = state_.get();
  } else {
    scratch = state_ ? state_->clone() : layer_.make_stream(N);
    impl = scratch.get();
  }
  const ThreadLimit limit(stream_threads(N * q.dim(1)));
  impl->check_room(q.dim(1), fn);
  return impl->step(q.data(), k.data(), v.data(), q.dim(1)).clone();
}

Tensor ContinualSteps::forward_step(const Tensor& query, const Tensor& key, const Tensor& value,
                                                 bool update_state) {
  const std::string fn = std::string(layer_.cls_) + "::forward_step";
  check_shape(query, {-1, layer_.E_}, fn.c_str(), "query", {"N"});
  const Tensor& k = key.empty() ? query : key;
  const Tensor& v = value.empty() ? query : value;
  check_shape(k, {query.dim(0), layer_.E_}, fn.c_str(), "key", {"N"});
  check_shape(v, {query.dim(0), layer_.E_}, fn.c_str(), "value", {"N"});
  const Shape one{query.dim(0), 1, layer_.E_};
  const Tensor y = run(query.reshape(one), k.reshape(one), v.reshape(one), update_state, fn.c_str());
  if (y.dim(1) == 0) return {};
  if (layer_.single_output_) return y.reshape(Shape{y.dim(0), layer_.E_});
  const Tensor w = y.reshape(Shape{y.dim(0), layer_.L_, layer_.E_});  // (N, L, E)
  if (layer_.opt_.embed_dim_second) return permute(w, {0, 2, 1});
  if (!layer_.batch_first_) return permute(w, {1, 0, 2});
  return w;
}

Tensor ContinualSteps::forward_steps(const Tensor& query, const Tensor& key, const Tensor& value,
                                                  bool update_state) {
  const std::string fn = std::string(layer_.cls_) + "::forward_steps";
  const Tensor q = layer_.to_batch_first(query, fn.c_str(), "query", layer_.E_);
  const Tensor k = key.empty() ? q : layer_.to_batch_first(key, fn.c_str(), "key", layer_.E_);
  const Tensor v = value.empty() ? q : layer_.to_batch_first(value, fn.c_str(), "value", layer_.E_);
  check_shape(k, {q.dim(0), q.dim(1), layer_.E_}, fn.c_str(), "key", {"N", "T"});
  check_shape(v, {q.dim(0), q.dim(1), layer_.E_}, fn.c_str(), "value", {"N", "T"});
  check(q.dim(1) >= 1, fn, ": query: expected at least 1 token, got shape ", query.shape());
  const Tensor y = run(q, k, v, update_state, fn.c_str());
  if (y.dim(1) == 0) return {};
  if (layer_.single_output_) {  // (N, T', E)
    if (layer_.opt_.embed_dim_second) return permute(y, {0, 2, 1});
    if (!layer_.batch_first_) return permute(y, {1, 0, 2});
    return y;
  }
  // (N, T', L, E)
  if (layer_.opt_.embed_dim_second) return permute(y, {0, 3, 1, 2});
  if (!layer_.batch_first_) return permute(y, {1, 2, 0, 3});
  return y;
}

}  // namespace tokenmix
