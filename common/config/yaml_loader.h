#pragma once

// LoadYaml maps a YAML document onto a config message (proto/meshtls/config/v1/) by field
// name: mappings onto messages, lists onto repeated fields, scalars by the field's type, and
// google.protobuf.Duration fields from "500ms", "10s", "24h", "1h30m". The schema's field
// options (proto/meshtls/config/v1/options.proto) drive the rest: absent fields take their
// `default_value`, a `required` field missing from a mapping that is present is an error, and
// numbers and durations outside `min`..`max` are refused. Unknown fields are refused.
//
// Every error is one line, "field.path: what is wrong (line N)", the shape operators know from
// the binaries. The checks a schema cannot express stay with the caller, which uses
// LoadedFields to learn which fields were written and to name them with their line.
//
// Thread-safe: each call works on its own tree and message.

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/base/host_port.h"
#include "common/base/log.h"

namespace google::protobuf {
class Message;
}  // namespace google::protobuf

namespace meshtls::config {

// LoadedFields remembers where each field of a loaded document was written: "tls",
// "inbound[0].listen" -> line. A field absent from it took its default. A plain value.
class LoadedFields {
 public:
  // Has tells whether the field was written in the document (even as an empty value).
  bool Has(absl::string_view path) const { return lines_.count(std::string(path)) > 0; }
  // Line returns the field's line, or that of the nearest enclosing field written in the
  // document; 0 at the top level.
  int Line(absl::string_view path) const;
  // Error returns InvalidArgument("<path>: <message> (line N)"), without the line when there is
  // none to name.
  absl::Status Error(absl::string_view path, absl::string_view message) const;

  // Record notes that `path` was written on `line` (the loader calls it).
  void Record(std::string path, int line) { lines_[std::move(path)] = line; }

 private:
  std::map<std::string, int, std::less<>> lines_;
};

// ReadListenAddress checks the listen address written at `path`: an IP literal with a port
// ("0.0.0.0:15443", "[::]:15443"; port 0 means any free port). Errors name the field and line.
absl::StatusOr<base::HostPort> ReadListenAddress(const LoadedFields& fields, absl::string_view path,
                                                 absl::string_view text);

// ReadLogSettings checks `log.level` and `log.format`. Errors name the field and line.
absl::StatusOr<base::LogSettings> ReadLogSettings(const LoadedFields& fields,
                                                  absl::string_view level,
                                                  absl::string_view format);

// LoadYaml parses `yaml` into `message` (cleared first). See the file comment.
absl::StatusOr<LoadedFields> LoadYaml(absl::string_view yaml, google::protobuf::Message& message);

}  // namespace meshtls::config
