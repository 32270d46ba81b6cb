#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace meshtls::net {

// Cidr is an IPv4 or IPv6 network in CIDR notation ("10.244.0.0/16", "fd00:10::/64"). A plain
// address ("10.0.0.7", "fd00::7") is the network of that one address. A value type.
class Cidr {
 public:
  // Parse refuses a network with host bits set ("10.0.0.1/8"): the rule it is in would not
  // mean what it seems to, so the error names the network that was probably meant.
  static absl::StatusOr<Cidr> Parse(absl::string_view text);

  bool is_ipv6() const { return ipv6_; }
  int prefix_length() const { return prefix_length_; }
  // ContainsAddress: `address` is 4 (IPv4) or 16 (IPv6) raw bytes, as
  // PeerAddress::AddressBytes gives them (an IPv4-mapped IPv6 address arrives as its 4 bytes).
  bool ContainsAddress(absl::string_view address) const;
  // Contains: every address of `other` is in this network (same family).
  bool Contains(const Cidr& other) const;
  bool Overlaps(const Cidr& other) const {
    return prefix_length_ <= other.prefix_length_ ? Contains(other) : other.Contains(*this);
  }
  // ToString gives the canonical form ("10.244.0.0/16", "fd00:10::/64").
  std::string ToString() const;
  bool operator==(const Cidr&) const = default;

 private:
  std::array<uint8_t, 16> bytes_{};  // IPv4 uses the first 4
  int prefix_length_ = 0;
  bool ipv6_ = false;
};

}  // namespace meshtls::net
