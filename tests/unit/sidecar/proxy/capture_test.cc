// Transparent mode's decisions without sockets: first bytes, destination rules, inbound ports.
// The original destination itself (SO_ORIGINAL_DST) needs real packet-filter rules: the
// transparent integration tests cover it.
#include "sidecar/proxy/capture.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>

#include "common/base/host_port.h"

namespace meshtls::sidecar {
namespace {

net::SocketAddress Address(const char* host_port) {
  absl::StatusOr<base::HostPort> hp = base::ParseHostPort(host_port);
  EXPECT_TRUE(hp.ok()) << host_port;
  absl::StatusOr<net::SocketAddress> a = net::ToSocketAddress(*hp);
  EXPECT_TRUE(a.ok()) << host_port;
  return *a;
}

net::Cidr Network(const char* text) { return *net::Cidr::Parse(text); }

TEST(CaptureTest, FirstBytesTellAClientHelloFromPlainText) {
  using std::string_literals::operator""s;
  EXPECT_EQ(ClassifyFirstBytes(""), FirstBytes::kNeedMore);
  EXPECT_EQ(ClassifyFirstBytes("\x16"), FirstBytes::kNeedMore);
  EXPECT_EQ(ClassifyFirstBytes("\x16\x03"), FirstBytes::kNeedMore);
  EXPECT_EQ(ClassifyFirstBytes("\x16\x03\x01"), FirstBytes::kTlsHandshake);  // every TLS client
  EXPECT_EQ(ClassifyFirstBytes("\x16\x03\x03"), FirstBytes::kTlsHandshake);
  EXPECT_EQ(ClassifyFirstBytes("\x16\x03\x00"s), FirstBytes::kTlsHandshake);
  EXPECT_EQ(ClassifyFirstBytes("GET / HTTP/1.1\r\n"), FirstBytes::kOther);
  EXPECT_EQ(ClassifyFirstBytes("\x16\x04\x01"), FirstBytes::kOther);
  EXPECT_EQ(ClassifyFirstBytes("\x16\x03\x05"), FirstBytes::kOther);
  EXPECT_EQ(ClassifyFirstBytes("\x17\x03\x03"), FirstBytes::kOther);  // application data first
  EXPECT_EQ(ClassifyFirstBytes("\x00"s), FirstBytes::kOther);
  EXPECT_EQ(ClassifyFirstBytes("\x16X"), FirstBytes::kOther);  // decided on two bytes
}

TEST(CaptureTest, FirstMatchingRuleDecidesByNetworkAndPort) {
  OutboundCapture capture;
  capture.rules.push_back({.name = "payments",
                           .networks = {Network("10.244.7.0/24")},
                           .ports = {8443},
                           .action = CaptureAction::kMesh});
  capture.rules.push_back({.name = "pods",
                           .networks = {Network("10.244.0.0/16"), Network("fd00:10::/64")},
                           .ports = {},
                           .action = CaptureAction::kMesh});
  capture.rules.push_back(
      {.name = "db", .networks = {}, .ports = {5432}, .action = CaptureAction::kPassthrough});
  auto rule_for = [&](const char* destination) -> std::string {
    const CaptureRule* rule = capture.Match(Address(destination));
    return rule == nullptr ? "(none)" : rule->name;
  };
  EXPECT_EQ(rule_for("10.244.7.9:8443"), "payments");
  EXPECT_EQ(rule_for("10.244.7.9:8080"), "pods");  // the port narrows the first rule
  EXPECT_EQ(rule_for("10.244.200.1:80"), "pods");
  EXPECT_EQ(rule_for("[fd00:10::5]:80"), "pods");
  EXPECT_EQ(rule_for("[fd00:11::5]:80"), "(none)");
  EXPECT_EQ(rule_for("192.0.2.1:5432"), "db");  // no networks: any address
  EXPECT_EQ(rule_for("[2001:db8::1]:5432"), "db");
  EXPECT_EQ(rule_for("192.0.2.1:5433"), "(none)");
}

TEST(CaptureTest, InboundPortsFallBackToTheDefault) {
  InboundCapture capture;
  capture.default_port.permissive = false;
  capture.ports.emplace_back().port = 8081;
  capture.ports.back().permissive = true;
  capture.own_ports = {15000, 15006};
  EXPECT_TRUE(capture.For(8081).permissive);
  EXPECT_FALSE(capture.For(8080).permissive);
  EXPECT_EQ(capture.For(8080).port, 0);
  EXPECT_TRUE(capture.IsOwnPort(15006));
  EXPECT_FALSE(capture.IsOwnPort(8080));
}

TEST(CaptureTest, SameAddressComparesIpAndPort) {
  EXPECT_TRUE(IsSameAddress(Address("127.0.0.1:15001"), Address("127.0.0.1:15001")));
  EXPECT_FALSE(IsSameAddress(Address("127.0.0.1:15001"), Address("127.0.0.1:15002")));
  EXPECT_FALSE(IsSameAddress(Address("127.0.0.1:15001"), Address("127.0.0.2:15001")));
  EXPECT_TRUE(IsSameAddress(Address("[::1]:15001"), Address("[::1]:15001")));
  EXPECT_EQ(PortOf(Address("[fd00::1]:8080")), 8080);
}

}  // namespace
}  // namespace meshtls::sidecar
