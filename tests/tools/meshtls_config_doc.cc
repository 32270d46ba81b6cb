// meshtls-config-doc prints docs/configuration.md: the configuration reference rendered from
// the schemas in proto/meshtls/config/v1/. ctest's config_reference fails when the committed
// file differs; regenerate with
//   build/tests/meshtls-config-doc > docs/configuration.md

#include <iostream>

#include "common/config/reference_doc.h"
#include "meshtls/config/v1/certmgr.pb.h"
#include "meshtls/config/v1/sidecar.pb.h"

namespace {

constexpr char kIntroduction[] = R"(# Configuration reference

Generated from the schemas in `proto/meshtls/config/v1/` by `meshtls-config-doc` (ctest
`config_reference` fails when this file and the schemas differ); do not edit by hand.

Both files are YAML, read with libyaml. An unknown field, a value of the wrong type or out of
range, a duplicate key, anchors, aliases or tags, or more than one document are errors naming
the field and its line; the binaries then exit with code 2 and one line on stderr. Durations
are written `500ms`, `10s`, `2m`, `24h`, `1h30m`. A list of one may be written as its one
value. A section left out takes the defaults of its fields.
)";

}  // namespace

int main() {
  absl::StatusOr<std::string> sidecar =
      meshtls::config::RenderReference(*meshtls::config::v1::Sidecar::descriptor());
  absl::StatusOr<std::string> certmgr =
      meshtls::config::RenderReference(*meshtls::config::v1::Certmgr::descriptor());
  if (!sidecar.ok() || !certmgr.ok()) {
    std::cerr << "meshtls-config-doc: "
              << (sidecar.ok() ? certmgr.status() : sidecar.status()).message() << "\n";
    return 1;
  }
  std::cout << kIntroduction << "\n## Sidecar (`meshtls-sidecar --config`)\n\n"
            << *sidecar << "\n## certmgr (`meshtls-certmgr --config`)\n\n"
            << *certmgr;
  return 0;
}
