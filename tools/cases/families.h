// tools/cases/families.h: one factory per layer family; registry.cpp lists them.
#pragma once

#include "cases/case.h"

namespace tokenmix::cases {

CaseFamily espnet_mha_family();
CaseFamily fastformer_family();
CaseFamily hypermixing_family();
CaseFamily primer_ez_family();
CaseFamily continual_family();

}  // namespace tokenmix::cases
