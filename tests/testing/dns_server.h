#pragma once

// A DNS server of the test's own: UDP on loopback, answering A and AAAA queries from a table
// the test sets and changes at runtime.

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/base/fd.h"

namespace meshtls::testing {

// DnsServer answers, on 127.0.0.1 (a free port unless one is given), every UDP query for a
// name in its table with the name's A or AAAA records and TTL (NOERROR with no answer when the
// name has none of the asked type), a name marked silent with nothing at all (the query is
// dropped, as by a DNS server that hangs), and any other name with NXDOMAIN. It counts the
// queries for each name. Names compare case-insensitively, without a trailing dot.
//
// The table may change while the server runs; every method is thread-safe. The server's
// thread polls with a short timeout and ends in the destructor.
class DnsServer {
 public:
  explicit DnsServer(uint16_t port = 0);
  ~DnsServer();
  DnsServer(const DnsServer&) = delete;
  DnsServer& operator=(const DnsServer&) = delete;

  uint16_t port() const { return port_; }
  // address is "127.0.0.1:<port>", as the sidecar's dns.servers takes it.
  std::string address() const;

  // SetAnswer makes `name` resolve to `addresses` (IPv4 and IPv6 literals) with `ttl_seconds`.
  void SetAnswer(absl::string_view name, const std::vector<std::string>& addresses,
                 uint32_t ttl_seconds);
  // SetSilent makes queries for `name` go unanswered.
  void SetSilent(absl::string_view name);
  // Remove makes `name` unknown again (NXDOMAIN).
  void Remove(absl::string_view name);
  // Queries counts the queries received for `name` (any type) since the start.
  int Queries(absl::string_view name) const;

 private:
  struct Entry {
    bool silent = false;
    std::vector<std::string> a;     // 4-byte records
    std::vector<std::string> aaaa;  // 16-byte records
    uint32_t ttl = 0;
  };
  void Serve();
  // Answer builds the response to one query (empty: send nothing).
  std::string Answer(const std::string& query);

  uint16_t port_ = 0;
  base::UniqueFd fd_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::map<std::string, Entry> names_;  // guarded by mu_
  std::map<std::string, int> queries_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace meshtls::testing
