#pragma once

// The hand-written loaders as they were before the schema-driven ones, kept only to prove the
// new loaders read every shipped example the same way (examples_test.cc).

#include "absl/status/statusor.h"
#include "certmgr/server/certmgr_config.h"
#include "sidecar/config/sidecar_config.h"

namespace meshtls::legacy {

absl::StatusOr<sidecar::SidecarConfig> ParseSidecarConfig(absl::string_view yaml, bool check_files);
absl::StatusOr<certmgr::CertmgrConfig> ParseCertmgrConfig(absl::string_view yaml);

}  // namespace meshtls::legacy
