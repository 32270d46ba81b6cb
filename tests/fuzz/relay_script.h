#pragma once

// The relay fuzz target's input language (tests/fuzz/relay_fuzz.cc), shared with the seed
// generator (make_fuzz_seeds.cc) so the seeds say what they do.
//
// Byte 0 is the setup: bit 0 the direction (0 inbound, 1 outbound), bits 1-2 the remote peer
// (RelayPeer), bit 3 whether the side the sidecar dials (the app inbound, the peer outbound)
// refuses connections from the start. Then operations: one byte (taken modulo kRelayOpCount) and
// its arguments.

#include <cstdint>
#include <string>

namespace meshtls::fuzz {

enum class RelayPeer : uint8_t {
  kAuthorized = 0,  // a mesh certificate the listener allows
  kNotAllowed = 1,  // a valid mesh certificate with an identity the listener does not allow
  kUntrusted = 2,   // the allowed identity, signed by a CA outside the trust bundle
  kRaw = 3,         // no TLS at all: only the raw bytes of kPeerRaw
};

enum class RelayOp : uint8_t {
  kPeerWrite = 0,    // 2 bytes: length-1 (mod 64 KiB); the peer sends that much of its stream
  kAppWrite = 1,     // 2 bytes: the same for the app
  kPeerRead = 2,     // 2 bytes: the peer reads up to that much
  kAppRead = 3,      // 2 bytes: the app reads up to that much
  kPeerCloseNotify,  // the peer sends close_notify (after its handshake)
  kPeerFin,          // the peer's socket shuts down for writing
  kPeerReset,        // the peer's socket closes with a RST
  kAppFin,
  kAppReset,
  kPeerRaw,         // 1 byte n-1 (mod 64), then n bytes written raw into the TLS stream
  kSteps,           // 1 byte: run the event loop (n mod 16)+1 times
  kAppClose,        // the app closes its socket (without reading what is left)
  kPeerClose,       // the peer closes its socket (no close_notify)
  kRefuseUpstream,  // the driver stops listening: a connect the sidecar has not made is refused
  kCount,
};
inline constexpr int kRelayOpCount = static_cast<int>(RelayOp::kCount);

// RelayScript builds an input.
class RelayScript {
 public:
  RelayScript(bool outbound, RelayPeer peer, bool refuse_upstream = false)
      : bytes_(1, static_cast<char>((outbound ? 1 : 0) | (static_cast<int>(peer) << 1) |
                                    (refuse_upstream ? 8 : 0))) {}
  RelayScript& Op(RelayOp op) {
    bytes_.push_back(static_cast<char>(op));
    return *this;
  }
  // Sized: kPeerWrite, kAppWrite, kPeerRead, kAppRead with a length of 1..65536.
  RelayScript& Op(RelayOp op, uint32_t length) {
    Op(op);
    bytes_.push_back(static_cast<char>(((length - 1) >> 8) & 0xff));
    bytes_.push_back(static_cast<char>((length - 1) & 0xff));
    return *this;
  }
  RelayScript& Steps(int n) {
    Op(RelayOp::kSteps);
    bytes_.push_back(static_cast<char>(n - 1));
    return *this;
  }
  RelayScript& Raw(const std::string& data) {  // 1..64 bytes
    Op(RelayOp::kPeerRaw);
    bytes_.push_back(static_cast<char>(data.size() - 1));
    bytes_ += data;
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

}  // namespace meshtls::fuzz
