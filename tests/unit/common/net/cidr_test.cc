#include "common/net/cidr.h"

#include <arpa/inet.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace meshtls::net {
namespace {

using ::testing::HasSubstr;

Cidr MustParse(const char* text) {
  absl::StatusOr<Cidr> c = Cidr::Parse(text);
  EXPECT_TRUE(c.ok()) << text << ": " << c.status();
  return c.ok() ? *c : Cidr();
}

std::string Bytes(const char* ip) {
  std::string out(16, '\0');
  if (::inet_pton(AF_INET, ip, out.data()) == 1) {
    out.resize(4);
    return out;
  }
  EXPECT_EQ(::inet_pton(AF_INET6, ip, out.data()), 1) << ip;
  return out;
}

TEST(CidrTest, ParsesNetworksAndSingleAddresses) {
  EXPECT_EQ(MustParse("10.244.0.0/16").ToString(), "10.244.0.0/16");
  EXPECT_EQ(MustParse("10.0.0.7").ToString(), "10.0.0.7/32");
  EXPECT_EQ(MustParse("0.0.0.0/0").ToString(), "0.0.0.0/0");
  EXPECT_EQ(MustParse("fd00:10:0::/48").ToString(), "fd00:10::/48");
  EXPECT_EQ(MustParse("::/0").ToString(), "::/0");
  EXPECT_TRUE(MustParse("fd00::1").is_ipv6());
  EXPECT_EQ(MustParse("fd00::1").prefix_length(), 128);
}

TEST(CidrTest, RefusesWhatIsNotANetworkNamingIt) {
  for (const char* bad :
       {"", "10.0.0.0/", "10.0.0.0/33", "fd00::/129", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/08x",
        "10.0.0/8", "example.com/8", "/8", "10.0.0.0/8/8", " 10.0.0.0/8", "::ffff:10.0.0.0/104",
        "::ffff:10.0.0.1"}) {
    absl::StatusOr<Cidr> c = Cidr::Parse(bad);
    EXPECT_FALSE(c.ok()) << bad;
    EXPECT_THAT(c.status().message(), HasSubstr(std::string("\"") + bad + "\"")) << bad;
  }
}

TEST(CidrTest, HostBitsSetNamesTheNetworkMeant) {
  absl::StatusOr<Cidr> c = Cidr::Parse("10.1.2.3/8");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("host bits set; the network is 10.0.0.0/8"));
  c = Cidr::Parse("fd00::1/64");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("fd00::/64"));
  EXPECT_FALSE(Cidr::Parse("10.1.3.0/23").ok());  // 3 has the 24th bit set
  EXPECT_TRUE(Cidr::Parse("10.1.2.0/23").ok());
}

TEST(CidrTest, ContainsAddressByFamilyAndPrefix) {
  const Cidr pods = MustParse("10.244.0.0/16");
  EXPECT_TRUE(pods.ContainsAddress(Bytes("10.244.0.0")));
  EXPECT_TRUE(pods.ContainsAddress(Bytes("10.244.255.255")));
  EXPECT_FALSE(pods.ContainsAddress(Bytes("10.245.0.0")));
  EXPECT_FALSE(pods.ContainsAddress(Bytes("fd00::1")));  // other family
  EXPECT_FALSE(pods.ContainsAddress(""));
  const Cidr odd = MustParse("10.0.0.128/25");
  EXPECT_TRUE(odd.ContainsAddress(Bytes("10.0.0.200")));
  EXPECT_FALSE(odd.ContainsAddress(Bytes("10.0.0.127")));
  const Cidr v6 = MustParse("fd00:10::/33");
  EXPECT_TRUE(v6.ContainsAddress(Bytes("fd00:10:7fff::1")));
  EXPECT_FALSE(v6.ContainsAddress(Bytes("fd00:10:8000::1")));
  EXPECT_TRUE(MustParse("0.0.0.0/0").ContainsAddress(Bytes("192.0.2.1")));
  EXPECT_TRUE(MustParse("::/0").ContainsAddress(Bytes("2001:db8::1")));
}

TEST(CidrTest, ContainsAndOverlapsBetweenNetworks) {
  const Cidr wide = MustParse("10.0.0.0/8");
  const Cidr narrow = MustParse("10.1.0.0/16");
  const Cidr other = MustParse("192.168.0.0/16");
  EXPECT_TRUE(wide.Contains(narrow));
  EXPECT_FALSE(narrow.Contains(wide));
  EXPECT_TRUE(wide.Contains(wide));
  EXPECT_TRUE(wide.Overlaps(narrow));
  EXPECT_TRUE(narrow.Overlaps(wide));
  EXPECT_FALSE(wide.Overlaps(other));
  EXPECT_FALSE(MustParse("::/0").Overlaps(wide));  // families never overlap
}

}  // namespace
}  // namespace meshtls::net
