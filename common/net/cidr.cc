#include "common/net/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace meshtls::net {
namespace {

// PrefixMatches: the first `bits` bits of `a` and `b` are equal.
bool PrefixMatches(const uint8_t* a, const uint8_t* b, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(a, b, static_cast<size_t>(whole)) != 0) {
    return false;
  }
  const int rest = bits % 8;
  if (rest == 0) {
    return true;
  }
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

}  // namespace

absl::StatusOr<Cidr> Cidr::Parse(absl::string_view text) {
  const std::string quoted = absl::StrCat("\"", text, "\"");
  const size_t slash = text.find('/');
  const std::string address(text.substr(0, slash));
  Cidr c;
  if (::inet_pton(AF_INET, address.c_str(), c.bytes_.data()) == 1) {
    c.ipv6_ = false;
  } else if (::inet_pton(AF_INET6, address.c_str(), c.bytes_.data()) == 1) {
    c.ipv6_ = true;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(quoted,
                     " is not a network: write an IP address with an optional /prefix-length "
                     "(10.244.0.0/16, fd00:10::/64)"));
  }
  if (c.ipv6_ && IN6_IS_ADDR_V4MAPPED(reinterpret_cast<const in6_addr*>(c.bytes_.data()))) {
    // Connections to IPv4 addresses are matched as IPv4, even on a dual-stack socket.
    return absl::InvalidArgumentError(
        absl::StrCat(quoted, " is an IPv4-mapped IPv6 network: write the IPv4 network instead"));
  }
  const int max_length = c.ipv6_ ? 128 : 32;
  c.prefix_length_ = max_length;
  if (slash != absl::string_view::npos) {
    int length = -1;
    const absl::string_view digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3 ||
        digits.find_first_not_of("0123456789") != absl::string_view::npos ||
        !absl::SimpleAtoi(digits, &length) || length > max_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          quoted, ": the prefix length must be a whole number from 0 to ", max_length));
    }
    c.prefix_length_ = length;
  }
  Cidr network = c;
  const int bytes = max_length / 8;
  for (int bit = c.prefix_length_; bit < max_length; ++bit) {
    network.bytes_[static_cast<size_t>(bit / 8)] &= static_cast<uint8_t>(~(0x80 >> (bit % 8)));
  }
  if (std::memcmp(network.bytes_.data(), c.bytes_.data(), static_cast<size_t>(bytes)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(quoted, " has host bits set; the network is ", network.ToString()));
  }
  return c;
}

bool Cidr::ContainsAddress(absl::string_view address) const {
  if (address.size() != (ipv6_ ? 16u : 4u)) {
    return false;
  }
  return PrefixMatches(bytes_.data(), reinterpret_cast<const uint8_t*>(address.data()),
                       prefix_length_);
}

bool Cidr::Contains(const Cidr& other) const {
  return ipv6_ == other.ipv6_ && prefix_length_ <= other.prefix_length_ &&
         PrefixMatches(bytes_.data(), other.bytes_.data(), prefix_length_);
}

std::string Cidr::ToString() const {
  char text[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(ipv6_ ? AF_INET6 : AF_INET, bytes_.data(), text, sizeof(text));
  return absl::StrCat(text, "/", prefix_length_);
}

}  // namespace meshtls::net
