#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace meshtls::pki {

// OpenSslError drains this thread's OpenSSL error queue into a status: "<context>: <reasons>".
// Draining keeps stale errors from confusing the next call on the same thread.
absl::Status OpenSslError(absl::StatusCode code, absl::string_view context);

// DrainOpenSslErrors empties the queue and returns its reasons joined with "; ".
std::string DrainOpenSslErrors();

}  // namespace meshtls::pki
