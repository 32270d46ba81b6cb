// net socket helpers over real loopback sockets: listen options (IPv6-only or not), accepting
// with the peer's address, the address key that groups one client host's connections, and the
// kernel's count of unsent bytes.

#include "common/net/socket.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/base/host_port.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::net {
namespace {

using ::meshtls::testing::IsOk;
using ::meshtls::testing::StatusIs;
using ::testing::HasSubstr;

SocketAddress Address(const std::string& text) {
  absl::StatusOr<base::HostPort> hp = base::ParseHostPort(text, /*allow_port_zero=*/true);
  EXPECT_THAT(hp, IsOk());
  absl::StatusOr<SocketAddress> address = ToSocketAddress(*hp);
  EXPECT_THAT(address, IsOk());
  return address.value_or(SocketAddress{});
}

// AcceptOne waits up to five seconds for one connection on `listen_fd`.
base::UniqueFd AcceptOne(int listen_fd, PeerAddress& peer) {
  pollfd p{.fd = listen_fd, .events = POLLIN, .revents = 0};
  if (::poll(&p, 1, 5000) != 1) {
    return base::UniqueFd();
  }
  return AcceptTcp(listen_fd, peer);
}

TEST(PeerAddressTest, AddressBytesGroupsAHostWhicheverFamilySawIt) {
  const PeerAddress v4 = PeerAddress::From(Address("127.0.0.2:1000"));
  const PeerAddress mapped = PeerAddress::From(Address("[::ffff:127.0.0.2]:2000"));
  const PeerAddress v6 = PeerAddress::From(Address("[::1]:1000"));
  EXPECT_EQ(v4.AddressBytes(), std::string("\x7f\x00\x00\x02", 4));
  EXPECT_EQ(mapped.AddressBytes(), v4.AddressBytes()) << "the port is no part of the key";
  EXPECT_EQ(v6.AddressBytes(), std::string(15, '\0') + "\x01");
  EXPECT_NE(PeerAddress::From(Address("127.0.0.3:1000")).AddressBytes(), v4.AddressBytes());
  EXPECT_EQ(PeerAddress().AddressBytes(), "");
}

TEST(ListenTcpTest, AnIpv6OnlySocketRefusesAnIpv4MappedAddress) {
  EXPECT_THAT(ListenTcp(Address("[::ffff:127.0.0.1]:0")), StatusIs(absl::StatusCode::kUnavailable));
  absl::StatusOr<base::UniqueFd> taken = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_THAT(taken, IsOk());
  absl::StatusOr<base::UniqueFd> again =
      ListenTcp(Address(absl::StrCat("127.0.0.1:", LocalPort(taken->get()))));
  ASSERT_FALSE(again.ok());
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("cannot listen on 127.0.0.1:"));
}

TEST(ListenTcpTest, ADualStackSocketAcceptsIpv4ClientsWithTheirAddress) {
  absl::StatusOr<base::UniqueFd> listener =
      ListenTcp(Address("[::ffff:127.0.0.1]:0"), {.backlog = 8, .ipv6_only = false});
  ASSERT_THAT(listener, IsOk());
  PeerAddress none;
  const bool accepted_none = AcceptTcp(listener->get(), none).valid();
  const int accept_error = errno;
  EXPECT_FALSE(accepted_none);
  EXPECT_EQ(accept_error, EAGAIN) << "nothing waiting is not an error";

  absl::StatusOr<base::UniqueFd> client =
      testing::TcpConnectFrom("127.0.0.2", LocalPort(listener->get()));
  ASSERT_THAT(client, IsOk());
  PeerAddress peer;
  base::UniqueFd accepted = AcceptOne(listener->get(), peer);
  ASSERT_TRUE(accepted.valid()) << std::strerror(errno);
  EXPECT_EQ(peer.AddressBytes(), std::string("\x7f\x00\x00\x02", 4));
  EXPECT_THAT(peer.ToString(), HasSubstr("::ffff:127.0.0.2"));
}

// With a low-water mark of one byte, the bytes a non-reading peer leaves unsent are visible,
// and go back to zero once it reads.
TEST(UnsentBytesTest, CountsWhatAPeerDoesNotTake) {
  absl::StatusOr<base::UniqueFd> listener = ListenTcp(Address("127.0.0.1:0"));
  ASSERT_THAT(listener, IsOk());
  absl::StatusOr<base::UniqueFd> client = testing::TcpConnect(LocalPort(listener->get()));
  ASSERT_THAT(client, IsOk());
  const int small = 4096;
  ::setsockopt(client->get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  PeerAddress peer;
  base::UniqueFd server = AcceptOne(listener->get(), peer);
  ASSERT_TRUE(server.valid());
  ASSERT_TRUE(SetNotSentLowWater(server.get(), 1));
  EXPECT_EQ(UnsentBytes(server.get()), 0);

  // More than the peer's receive window and less than a long transfer through it.
  const std::string chunk(64 * 1024, 'x');
  size_t queued = 0;
  for (int i = 0; i < 8; ++i) {
    const ssize_t n = ::send(server.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n <= 0) {
      break;
    }
    queued += static_cast<size_t>(n);
  }
  ASSERT_GT(queued, 0u);
  ASSERT_TRUE(testing::WaitFor([&] { return UnsentBytes(server.get()) > 0; }, absl::Seconds(5)))
      << "a peer with a full receive window left nothing unsent";

  absl::StatusOr<std::string> taken = testing::RecvExactly(client->get(), queued, absl::Seconds(5));
  ASSERT_THAT(taken, IsOk());
  EXPECT_TRUE(testing::WaitFor([&] { return UnsentBytes(server.get()) == 0; }, absl::Seconds(5)));
}

}  // namespace
}  // namespace meshtls::net
