#include "cases/families.h"

namespace tokenmix::cases {

const std::vector<CaseFamily>& families() {
  static const std::vector<CaseFamily> all = {
      espnet_mha_family(),
      fastformer_family(),
      hypermixing_family(),
      primer_ez_family(),
      continual_family(),
  };
  return all;
}

}  // namespace tokenmix::cases
