#include "common/pki/openssl_error.h"

#include <openssl/err.h>

#include "absl/strings/str_cat.h"

namespace meshtls::pki {

std::string DrainOpenSslErrors() {
  std::string out;
  unsigned long code = 0;
  while ((code = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!out.empty()) {
      out += "; ";
    }
    out += buf;
  }
  return out;
}

absl::Status OpenSslError(absl::StatusCode code, absl::string_view context) {
  std::string reasons = DrainOpenSslErrors();
  if (reasons.empty()) {
    return absl::Status(code, context);
  }
  return absl::Status(code, absl::StrCat(context, ": ", reasons));
}

}  // namespace meshtls::pki
