#include "tests/testing/dns_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace meshtls::testing {
namespace {

constexpr uint16_t kTypeA = 1;
constexpr uint16_t kTypeAaaa = 28;
constexpr uint16_t kClassIn = 1;
constexpr int kRcodeNxdomain = 3;

std::string Normalize(absl::string_view name) {
  return absl::AsciiStrToLower(absl::StripSuffix(name, "."));
}

void Put16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xff));
}

void Put32(std::string& out, uint32_t v) {
  Put16(out, static_cast<uint16_t>(v >> 16));
  Put16(out, static_cast<uint16_t>(v & 0xffff));
}

uint16_t Get16(const std::string& in, size_t at) {
  return static_cast<uint16_t>((static_cast<uint8_t>(in[at]) << 8) |
                               static_cast<uint8_t>(in[at + 1]));
}

}  // namespace

DnsServer::DnsServer(uint16_t port) {
  fd_ = base::UniqueFd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (!fd_.valid() || ::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    fd_.reset();
    return;  // port() stays 0: the test's DNS lookups fail, and it says so
  }
  socklen_t length = sizeof(a);
  ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &length);
  port_ = ntohs(a.sin_port);
  thread_ = std::thread([this] { Serve(); });
}

DnsServer::~DnsServer() {
  stop_.store(true);
  if (thread_.joinable()) {
    thread_.join();
  }
}

std::string DnsServer::address() const { return absl::StrCat("127.0.0.1:", port_); }

void DnsServer::SetAnswer(absl::string_view name, const std::vector<std::string>& addresses,
                          uint32_t ttl_seconds) {
  Entry e;
  e.ttl = ttl_seconds;
  for (const std::string& text : addresses) {
    in6_addr v6{};
    in_addr v4{};
    if (inet_pton(AF_INET, text.c_str(), &v4) == 1) {
      e.a.emplace_back(reinterpret_cast<const char*>(&v4), sizeof(v4));
    } else if (inet_pton(AF_INET6, text.c_str(), &v6) == 1) {
      e.aaaa.emplace_back(reinterpret_cast<const char*>(&v6), sizeof(v6));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  names_[Normalize(name)] = std::move(e);
}

void DnsServer::SetSilent(absl::string_view name) {
  std::lock_guard<std::mutex> lock(mu_);
  names_[Normalize(name)] = Entry{.silent = true, .a = {}, .aaaa = {}, .ttl = 0};
}

void DnsServer::Remove(absl::string_view name) {
  std::lock_guard<std::mutex> lock(mu_);
  names_.erase(Normalize(name));
}

int DnsServer::Queries(absl::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = queries_.find(Normalize(name));
  return it == queries_.end() ? 0 : it->second;
}

void DnsServer::Serve() {
  // Bounded: each poll waits at most 50 ms, and the loop ends when the destructor asks.
  while (!stop_.load()) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) {
      continue;
    }
    char buffer[1500];
    sockaddr_storage from{};
    socklen_t from_length = sizeof(from);
    ssize_t n = ::recvfrom(fd_.get(), buffer, sizeof(buffer), 0, reinterpret_cast<sockaddr*>(&from),
                           &from_length);
    if (n <= 0) {
      continue;
    }
    const std::string response = Answer(std::string(buffer, static_cast<size_t>(n)));
    if (!response.empty()) {
      ::sendto(fd_.get(), response.data(), response.size(), 0,
               reinterpret_cast<const sockaddr*>(&from), from_length);
    }
  }
}

std::string DnsServer::Answer(const std::string& query) {
  if (query.size() < 12 || Get16(query, 4) != 1) {
    return "";  // not one question: ignore
  }
  // The question: labels up to the root, then type and class. Queries never compress.
  std::string name;
  size_t at = 12;
  while (at < query.size() && query[at] != 0) {
    const size_t length = static_cast<uint8_t>(query[at]);
    if (length > 63 || at + 1 + length >= query.size()) {
      return "";
    }
    absl::StrAppend(&name, name.empty() ? "" : ".", query.substr(at + 1, length));
    at += 1 + length;
  }
  if (at + 5 > query.size()) {
    return "";
  }
  const size_t question_end = at + 5;
  const uint16_t type = Get16(query, at + 1);
  name = Normalize(name);

  Entry entry;
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++queries_[name];
    if (auto it = names_.find(name); it != names_.end()) {
      entry = it->second;
      known = true;
    }
  }
  if (known && entry.silent) {
    return "";
  }
  const std::vector<std::string>* records = nullptr;
  if (known && type == kTypeA) {
    records = &entry.a;
  } else if (known && type == kTypeAaaa) {
    records = &entry.aaaa;
  }
  std::string out;
  Put16(out, Get16(query, 0));  // id
  const uint16_t query_flags = Get16(query, 2);
  // QR, the query's opcode and RD, RA, and the rcode.
  Put16(out, static_cast<uint16_t>(0x8000 | (query_flags & 0x7900) | 0x0080 |
                                   (known ? 0 : kRcodeNxdomain)));
  Put16(out, 1);
  Put16(out, static_cast<uint16_t>(records == nullptr ? 0 : records->size()));
  Put16(out, 0);
  Put16(out, 0);
  out.append(query, 12, question_end - 12);
  if (records != nullptr) {
    for (const std::string& rdata : *records) {
      Put16(out, 0xc00c);  // the name: a pointer to the question's
      Put16(out, type);
      Put16(out, kClassIn);
      Put32(out, entry.ttl);
      Put16(out, static_cast<uint16_t>(rdata.size()));
      out.append(rdata);
    }
  }
  return out;
}

}  // namespace meshtls::testing
