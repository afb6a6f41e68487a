// tokenmix/core/error.h: the library's error type and message helpers.
//
// Every error tokenmix raises is a tokenmix::Error (derived from std::invalid_argument, so callers that
// catch std::exception or std::invalid_argument see it too). Messages start with the function name,
// then name the argument and give expected vs. actual, e.g.
//   "EspnetMultiHeadedAttention::forward: query: expected shape (B, T1, 32) or (B, 32), got (3, 5, 16)".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tokenmix {

class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& what) : std::invalid_argument(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// Throws tokenmix::Error whose message is the concatenation of args (streamed with operator<<).
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(detail::concat(std::forward<Args>(args)...));
}

// Throws tokenmix::Error with the concatenated message when cond is false.
template <typename... Args>
void check(bool cond, Args&&... args) {
  if (!cond) fail(std::forward<Args>(args)...);
}

}  // namespace tokenmix
