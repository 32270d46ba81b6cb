#pragma once

#include <cstring>
#include <memory>
#include <vector>

namespace meshtls::sidecar {

// BufferPool recycles one worker's relay buffers, so moving bytes never calls malloc: a
// connection takes a buffer when it has bytes to hold and gives it back as soon as they are
// gone. At most `max_free` spare buffers are kept (1 MiB by default). Owned by the worker;
// used only on its thread.
class BufferPool {
 public:
  static constexpr size_t kBufferSize = 16 * 1024;
  explicit BufferPool(size_t max_free = 64) : max_free_(max_free) {}

  std::unique_ptr<char[]> Get() {
    if (free_.empty()) {
      return std::unique_ptr<char[]>(new char[kBufferSize]);
    }
    std::unique_ptr<char[]> b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void Put(std::unique_ptr<char[]> b) {
    if (b != nullptr && free_.size() < max_free_) {
      free_.push_back(std::move(b));
    }
  }

 private:
  size_t max_free_;
  std::vector<std::unique_ptr<char[]>> free_;
};

// RelayBuffer is one direction's bounded byte queue (16 KiB, one TLS record's worth). Its
// memory comes from the worker's BufferPool on first use and goes back by ReleaseIfEmpty()
// once drained, so an idle or handshaking connection holds none. A full buffer stops reading from
// the source: a slow reader slows the writer instead of growing memory. Owned by one connection;
// not thread-safe.
class RelayBuffer {
 public:
  static constexpr size_t kCapacity = BufferPool::kBufferSize;

  size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }
  size_t space() const { return kCapacity - size(); }

  // WritableSpan returns where up to space() bytes may be written (compacting if needed).
  char* WritableSpan(BufferPool& pool) {
    if (data_ == nullptr) {
      data_ = pool.Get();
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
  // ReleaseIfEmpty returns a drained buffer's memory to the pool: idle connections are the
  // common case (thousands held open by client pools), and 16 KiB each would dominate them.
  void ReleaseIfEmpty(BufferPool& pool) {
    if (empty() && data_ != nullptr) {
      pool.Put(std::move(data_));
    }
  }

 private:
  std::unique_ptr<char[]> data_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace meshtls::sidecar
