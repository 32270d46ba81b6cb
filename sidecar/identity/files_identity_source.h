#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/base/file_watcher.h"
#include "sidecar/identity/credential_sink.h"
#include "sidecar/identity/identity_source.h"

namespace meshtls::sidecar {

// FilesIdentityOptions names the PEM files of identity.files.
struct FilesIdentityOptions {
  std::string cert;          // leaf first, then intermediates
  std::string key;           // the leaf's private key
  std::string trust_bundle;  // the roots peers are verified against
  // How often the files are checked for a change (another inode, size, mtime or mode).
  absl::Duration poll_interval = absl::Seconds(1);
};

// FilesIdentitySource serves credentials written by someone else (cert-manager, a Kubernetes
// Secret, an operator): it loads the three files, publishes them, and loads them again whenever
// one of them changes on disk or Reload() is called (SIGHUP). A load that fails (a file
// missing, unparsable, or refused by the sink) keeps the credentials already published.
//
// The trust bundle sequence it publishes counts the trust bundle's contents: 1 for the first
// bundle published, one more each time a published bundle holds other roots than the previous
// one. Rewriting, touching or re-encoding the same roots, and changing only the certificate or
// key, keep the sequence.
//
// Thread-safety: Start, Reload and Stop on the main thread; the file watcher's thread reloads
// too, so loads are serialized by reload_mu_; status() on any thread.
class FilesIdentitySource final : public IdentitySource {
 public:
  FilesIdentitySource(FilesIdentityOptions options, CredentialSink& sink)
      : options_(std::move(options)), sink_(sink) {}
  ~FilesIdentitySource() override { Stop(); }

  // Start loads and publishes the files (returning why it could not), then follows them.
  absl::Status Start() override;
  absl::Status Reload() override;
  void Stop() override;
  IdentityStatus status() const override;

 private:
  absl::Status LoadAndPublish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_);

  const FilesIdentityOptions options_;
  CredentialSink& sink_;
  std::unique_ptr<base::FileWatcher> watcher_;  // set by Start, reset by Stop (main thread)

  absl::Mutex reload_mu_;  // serializes loads: SIGHUP (main thread) vs the file watcher's thread
  // The roots of the last published bundle (sorted DER, so order and PEM text do not count) and
  // that bundle's sequence.
  std::vector<std::string> published_roots_ ABSL_GUARDED_BY(reload_mu_);
  uint64_t bundle_sequence_ ABSL_GUARDED_BY(reload_mu_) = 0;

  mutable absl::Mutex status_mu_;
  IdentityStatus status_ ABSL_GUARDED_BY(status_mu_);
};

}  // namespace meshtls::sidecar
