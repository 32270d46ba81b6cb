#pragma once

// ToDuration converts a config message's google.protobuf.Duration to absl::Duration.

#include <google/protobuf/duration.pb.h>

#include "absl/time/time.h"

namespace meshtls::config {

inline absl::Duration ToDuration(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

}  // namespace meshtls::config
