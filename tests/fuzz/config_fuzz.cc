// Fuzz target: the YAML configuration of both binaries (operator input), read by libyaml and
// mapped onto the config schemas (common/config/yaml_loader.h). Either loader must
// return a value or one error naming the field; never crash, hang or run away with memory.

#include <cstdint>
#include <string>

#include "certmgr/server/certmgr_config.h"
#include "sidecar/config/sidecar_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string yaml(reinterpret_cast<const char*>(data), size);
  (void)meshtls::sidecar::ParseSidecarConfig(yaml, /*check_files=*/false);
  (void)meshtls::certmgr::ParseCertmgrConfig(yaml);
  return 0;
}
