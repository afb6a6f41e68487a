// ThreadLimit and the thread policy of Stream::push (core/threads.h): short pushes run on the
// calling thread alone, long ones keep the caller's setting, and the setting is restored after.
#include <omp.h>

#include "tokenmix/core/threads.h"
#include "test_util.h"

namespace tokenmix {
namespace {

// Restores the OpenMP setting a test changes.
class ThreadsTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = omp_get_max_threads(); }
  void TearDown() override { omp_set_num_threads(saved_); }
  int saved_ = 1;
};

TEST_F(ThreadsTest, LimitLowersAndRestores) {
  omp_set_num_threads(3);
  {
    const ThreadLimit one(1);
    EXPECT_EQ(omp_get_max_threads(), 1);
    {
      const ThreadLimit more(2);  // never raises
      EXPECT_EQ(omp_get_max_threads(), 1);
    }
    EXPECT_EQ(omp_get_max_threads(), 1);
  }
  EXPECT_EQ(omp_get_max_threads(), 3);
  {
    const ThreadLimit zero(0);  // taken as 1
    EXPECT_EQ(omp_get_max_threads(), 1);
  }
  {
    const ThreadLimit two(2);
    EXPECT_EQ(omp_get_max_threads(), 2);
  }
  EXPECT_EQ(omp_get_max_threads(), 3);
}

// A stream without state (the threading tests only push).
class StatelessStream : public Stream {
 public:
  Shape output_shape(int64_t chunk) const override { return Shape{1, chunk, 4}; }
  int64_t delay() const override { return 0; }
  void reset() override {}
  void reset_row(int64_t) override {}

 protected:
  std::string state_name() const override { return "StatelessStream"; }
  std::vector<int64_t> state_config() const override { return {}; }
  std::string state_config_names() const override { return ""; }
  void save_state(SafetensorsWriter&) const override {}
  void restore_state(const SafetensorsFile&) override {}
};

// A stream that records the OpenMP setting its push_chunk runs under; min_tokens is its
// parallel_min_tokens().
class RecordingStream final : public StatelessStream {
 public:
  explicit RecordingStream(int64_t min_tokens = threshold::kStreamTokens) : min_tokens_(min_tokens) {}
  int seen_threads = 0;
  Tensor push_chunk(const Tensor& chunk) override {
    seen_threads = omp_get_max_threads();
    return chunk;
  }
  int64_t parallel_min_tokens() const override { return min_tokens_; }

 private:
  int64_t min_tokens_;
};

TEST_F(ThreadsTest, ShortPushesRunOnOneThread) {
  omp_set_num_threads(2);
  RecordingStream s;
  for (auto [B, C, want] : {std::tuple<int64_t, int64_t, int>{1, 1, 1}, {1, 7, 1}, {3, 2, 1}, {1, 8, 2}, {2, 4, 2},
                            {4, 64, 2}}) {
    s.push(Tensor(Shape{B, C, 4}));
    EXPECT_EQ(s.seen_threads, want) << "push of (" << B << ", " << C << ", 4)";
    EXPECT_EQ(omp_get_max_threads(), 2) << "setting not restored after (" << B << ", " << C << ", 4)";
  }
}

TEST_F(ThreadsTest, HeavyStreamsParallelizeSingleTokens) {
  // A stream whose parallel_min_tokens() is 1 (HyperMixing's window) keeps the caller's setting even
  // for a one-token push.
  RecordingStream s(1);
  omp_set_num_threads(2);
  s.push(Tensor(Shape{1, 1, 4}));
  EXPECT_EQ(s.seen_threads, 2);
}

TEST_F(ThreadsTest, RestoredWhenPushThrows) {
  omp_set_num_threads(2);
  class Throwing final : public StatelessStream {
   public:
    Tensor push_chunk(const Tensor&) override { throw Error("Throwing::push: chunk: bad"); }
  } s;
  test::expect_error([&] { s.push(Tensor(Shape{1, 1, 4})); }, "Throwing::push: chunk: bad");
  EXPECT_EQ(omp_get_max_threads(), 2);
}

}  // namespace
}  // namespace tokenmix
