#pragma once

#include <cstring>
#include <memory>

namespace meshtls::sidecar {

// RelayBuffer is one direction's bounded byte queue (16 KiB, one TLS record's worth). Memory
// is allocated on first use and given back by ReleaseIfEmpty() once drained, so an idle or
// handshaking connection holds none. A full buffer stops reading from the source: a slow
// reader slows the writer instead of growing memory.
// Owned by one connection; not thread-safe.
class RelayBuffer {
 public:
  static constexpr size_t kCapacity = 16 * 1024;

  size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }
  size_t space() const { return kCapacity - size(); }

  // WritableSpan returns where up to space() bytes may be written (compacting if needed).
  char* WritableSpan() {
    if (data_ == nullptr) {
      data_.reset(new char[kCapacity]);
    }
    if (end_ == kCapacity && begin_ > 0) {
      std::memmove(data_.get(), data_.get() + begin_, size());
      end_ -= begin_;
      begin_ = 0;
    }
    return data_.get() + end_;
  }
  size_t WritableSize() const { return kCapacity - end_ + (end_ == kCapacity ? begin_ : 0); }
  void Commit(size_t n) { end_ += n; }
  const char* ReadableSpan() const { return data_.get() + begin_; }
  void Consume(size_t n) {
    begin_ += n;
    if (begin_ == end_) {
      begin_ = end_ = 0;
    }
  }
  // ReleaseIfEmpty frees the memory of a drained buffer: idle connections are the common case
  // (thousands held open by pools), and 16 KiB each would dominate their cost.
  void ReleaseIfEmpty() {
    if (empty()) {
      data_.reset();
    }
  }
  bool allocated() const { return data_ != nullptr; }

 private:
  std::unique_ptr<char[]> data_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace meshtls::sidecar
