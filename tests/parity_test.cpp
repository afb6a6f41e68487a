// Parity on every shipped reference case, through the same replay as `tokenmix run`: each case's
// layer is built from its metadata and state_dict and every out.* tensor is compared at the family's
// SPEC tolerance. A case added to tests/data/reference/<family>/ is tested automatically.
#include <gtest/gtest.h>

#include "cases/case.h"
#include "test_util.h"

namespace tokenmix {
namespace {

class ReferenceCase : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceCase, MatchesUpstream) {
  SafetensorsFile file(GetParam());
  const cases::CaseResult r = cases::run_case(file);
  ASSERT_FALSE(r.comparisons.empty()) << "case defines no out.* tensors";
  for (const auto& c : r.comparisons)
    EXPECT_TRUE(c.pass) << c.name << ": max_abs " << c.max_abs << " max_rel " << c.max_rel << " " << c.problem;
}

std::vector<std::string> all_cases() {
  std::vector<std::string> out;
  for (const auto& fam : cases::families())
    for (const auto& p : test::reference_cases(fam.family)) out.push_back(p);
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, ReferenceCase, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return test::case_name(info.param);
                         });

}  // namespace
}  // namespace tokenmix
