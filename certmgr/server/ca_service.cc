#include "certmgr/server/ca_service.h"

#include <grpcpp/grpcpp.h>

#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/base/log.h"
#include "common/pki/csr.h"

namespace meshtls::certmgr {
namespace {

using meshtls::ca::v1::SignRequest;
using meshtls::ca::v1::SignResponse;
using meshtls::ca::v1::WatchTrustBundleRequest;

constexpr absl::string_view kBearerPrefix = "Bearer ";

// ExtractCredentials reads the bearer token and the TLS client chain of a call.
CallerCredentials ExtractCredentials(const grpc::CallbackServerContext& context) {
  CallerCredentials out;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end()) {
    absl::string_view value(it->second.data(), it->second.size());
    if (absl::StartsWith(value, kBearerPrefix)) {
      out.bearer_token = std::string(value.substr(kBearerPrefix.size()));
    } else {
      out.bearer_token = std::string();  // present but malformed: fails authentication
    }
  }
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr) {
    return out;
  }
  // The leaf comes from x509_pem_cert. x509_pem_cert_chain is not reliably leaf-first, so it
  // only supplies the other certificates (intermediates), in the order given.
  std::vector<grpc::string_ref> leaf = auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (leaf.empty()) {
    return out;
  }
  absl::StatusOr<pki::Certificate> leaf_cert =
      pki::Certificate::FromPem(absl::string_view(leaf[0].data(), leaf[0].size()));
  if (!leaf_cert.ok()) {
    return out;
  }
  const std::string leaf_der = leaf_cert->ToDer();
  out.peer_chain.push_back(*std::move(leaf_cert));
  std::vector<grpc::string_ref> chain =
      auth->FindPropertyValues(GRPC_X509_PEM_CERT_CHAIN_PROPERTY_NAME);
  if (!chain.empty()) {
    absl::StatusOr<std::vector<pki::Certificate>> parsed =
        pki::ParsePemChain(absl::string_view(chain[0].data(), chain[0].size()));
    if (parsed.ok()) {
      for (pki::Certificate& c : *parsed) {
        if (c.ToDer() != leaf_der) {
          out.peer_chain.push_back(std::move(c));
        }
      }
    }
  }
  return out;
}

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    case absl::StatusCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case absl::StatusCode::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case absl::StatusCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case absl::StatusCode::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
    default:
      return grpc::StatusCode::INTERNAL;
  }
}

// BundleWriter streams trust bundles to one watcher. Its lifetime ends in OnDone(). The
// TrustBundleSource subscription reaches it through `shared_`, which OnDone() detaches under
// the same mutex, so a bundle update racing with the end of the stream never touches a
// deleted writer. StartWrite and Finish are called with no lock held: gRPC may run a reaction
// inline, and a reaction that took the mutex again would deadlock.
class BundleWriter final : public grpc::ServerWriteReactor<meshtls::ca::v1::TrustBundle> {
 public:
  BundleWriter(TrustBundleSource& source, CertmgrMetrics& metrics, std::function<void()> on_done)
      : source_(source),
        metrics_(metrics),
        on_done_(std::move(on_done)),
        shared_(std::make_shared<Shared>()) {
    shared_->writer = this;
    std::weak_ptr<Shared> weak = shared_;
    subscription_ = source_.Subscribe([weak] {
      if (std::shared_ptr<Shared> s = weak.lock()) {
        // Holding s->mu keeps the writer alive (OnDone detaches under it); the write itself
        // is started by Step() after the writer's state is decided.
        absl::MutexLock lock(&s->mu);
        if (s->writer != nullptr) {
          s->writer->pending_update_ = true;
          s->writer->Step(lock);
        }
      }
    });
    metrics_.SetWatchers(source_.subscriber_count());
    std::shared_ptr<Shared> keep = shared_;  // outlives `lock` even if the writer is deleted
    absl::MutexLock lock(&keep->mu);
    pending_update_ = true;
    Step(lock);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&shared_->mu);
    writing_ = false;
    if (!ok) {
      RequestFinish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
    }
    Step(lock);
  }

  void OnCancel() override {
    absl::MutexLock lock(&shared_->mu);
    RequestFinish(grpc::Status::CANCELLED);
    Step(lock);
  }

  void OnDone() override {
    source_.Unsubscribe(subscription_);
    {
      absl::MutexLock lock(&shared_->mu);
      shared_->writer = nullptr;
    }
    metrics_.SetWatchers(source_.subscriber_count());
    on_done_();
    delete this;
  }

 private:
  struct Shared {
    absl::Mutex mu;
    BundleWriter* writer ABSL_GUARDED_BY(mu) = nullptr;
  };

  void RequestFinish(grpc::Status status) {
    if (!finish_requested_) {
      finish_requested_ = true;
      finish_status_ = std::move(status);
    }
  }

  // Step decides the next action under the lock, then performs it unlocked. The lock is
  // re-taken before returning so the caller's MutexLock stays balanced. Once unlocked, OnDone
  // may delete this writer on another thread, so nothing after the action touches `this`.
  void Step(absl::MutexLock& /*held*/) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::shared_ptr<Shared> keep = shared_;
    enum class Action { kNone, kWrite, kFinish } action = Action::kNone;
    if (!writing_ && !finished_) {
      if (finish_requested_) {
        finished_ = true;
        action = Action::kFinish;
      } else if (pending_update_) {
        pending_update_ = false;
        std::shared_ptr<const TrustBundle> bundle = source_.Current();
        if (bundle->sequence > sent_sequence_) {
          message_.Clear();
          FillTrustBundle(*bundle, message_);
          sent_sequence_ = bundle->sequence;
          writing_ = true;
          action = Action::kWrite;
        }
      }
    }
    if (action == Action::kNone) {
      return;
    }
    grpc::Status finish_status = finish_status_;
    keep->mu.Unlock();
    if (action == Action::kWrite) {
      StartWrite(&message_);  // message_ is not touched again until OnWriteDone
    } else {
      Finish(std::move(finish_status));
    }
    keep->mu.Lock();
  }

  TrustBundleSource& source_;
  CertmgrMetrics& metrics_;
  const std::function<void()> on_done_;
  std::shared_ptr<Shared> shared_;
  TrustBundleSource::SubscriptionId subscription_ = 0;
  // The fields below are guarded by shared_->mu (GCC's analysis cannot name it through
  // the pointer).
  meshtls::ca::v1::TrustBundle message_;
  uint64_t sent_sequence_ = 0;
  bool pending_update_ = false;
  bool writing_ = false;
  bool finished_ = false;
  bool finish_requested_ = false;
  grpc::Status finish_status_;
};

// RefusedWatch ends a WatchTrustBundle call at once with `status`.
class RefusedWatch final : public grpc::ServerWriteReactor<meshtls::ca::v1::TrustBundle> {
 public:
  explicit RefusedWatch(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

// PeerAddress is the caller's IP address from gRPC's peer string ("ipv4:1.2.3.4:5678",
// "ipv6:[::1]:5678"), without the port.
std::string PeerAddress(const std::string& peer) {
  const size_t colon = peer.rfind(':');
  return colon == std::string::npos ? peer : peer.substr(0, colon);
}

const char* CredentialKind(const CallerCredentials& credentials) {
  return !credentials.peer_chain.empty()        ? "certificate"
         : credentials.bearer_token.has_value() ? "token"
                                                : "none";
}

}  // namespace

void FillTrustBundle(const TrustBundle& bundle, meshtls::ca::v1::TrustBundle& out) {
  out.set_trust_domain(bundle.trust_domain);
  for (const pki::Certificate& root : bundle.roots) {
    out.add_roots(root.ToDer());
  }
  out.set_sequence(bundle.sequence);
}

grpc::Status CaService::DoSign(grpc::CallbackServerContext& context, const SignRequest& request,
                               SignResponse& response, SignResult& result) {
  CallerCredentials credentials = ExtractCredentials(context);
  const char* credential_kind = CredentialKind(credentials);
  absl::StatusOr<pki::SpiffeId> id = authenticator_.Authenticate(credentials);
  if (!id.ok()) {
    result = absl::IsPermissionDenied(id.status())  ? SignResult::kPermissionDenied
             : absl::IsUnauthenticated(id.status()) ? SignResult::kUnauthenticated
                                                    : SignResult::kInternal;
    if (MayLogRefusal()) {
      base::LogWarning("sign refused", {{"peer", context.peer()},
                                        {"credential", credential_kind},
                                        {"error", std::string(id.status().message())}});
    }
    return grpc::Status(ToGrpcCode(id.status().code()), std::string(id.status().message()));
  }
  absl::StatusOr<pki::VerifiedCsr> csr = pki::ParseAndVerifyCsr(request.csr());
  if (!csr.ok()) {
    result = SignResult::kInvalidCsr;
    if (MayLogRefusal()) {
      base::LogWarning("sign refused: bad CSR", {{"peer", context.peer()},
                                                 {"spiffe_id", id->str()},
                                                 {"error", std::string(csr.status().message())}});
    }
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(csr.status().message()));
  }
  std::optional<absl::Duration> ttl;
  if (request.has_ttl()) {
    ttl = absl::Seconds(request.ttl().seconds()) + absl::Nanoseconds(request.ttl().nanos());
  }
  absl::StatusOr<IssuedCertificate> issued = signer_.Get()->SignWorkload(*csr, *id, ttl);
  if (!issued.ok()) {
    result = SignResult::kInternal;
    base::LogError("signing failed",
                   {{"spiffe_id", id->str()}, {"error", std::string(issued.status().message())}});
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "signing failed; retry later");
  }
  for (const pki::Certificate& c : issued->chain) {
    response.add_certificate_chain(c.ToDer());
  }
  FillTrustBundle(*bundle_.Current(), *response.mutable_trust_bundle());
  response.mutable_not_after()->set_seconds(absl::ToUnixSeconds(issued->not_after));
  result = SignResult::kSuccess;
  base::LogInfo("signed", {{"spiffe_id", id->str()},
                           {"credential", credential_kind},
                           {"serial", issued->chain[0].SerialHex()},
                           {"not_after", absl::FormatTime(issued->not_after)}});
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* CaService::Sign(grpc::CallbackServerContext* context,
                                          const SignRequest* request, SignResponse* response) {
  const absl::Time start = clock_.Now();
  SignResult result = SignResult::kInternal;
  grpc::Status status = DoSign(*context, *request, *response, result);
  metrics_.RecordSign(result, clock_.Now() - start);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

bool CaService::MayLogRefusal() {
  base::LogRateLimiter::Verdict verdict;
  {
    absl::MutexLock lock(&log_mu_);
    verdict = refusal_log_.Allow(base::LogRateLimiter::Clock::now());
  }
  if (verdict.allowed && verdict.suppressed_before > 0) {
    base::LogWarning("log lines suppressed by the rate limit",
                     {{"suppressed", std::to_string(verdict.suppressed_before)}});
  }
  return verdict.allowed;
}

std::optional<WatchRefusal> CaService::ReserveWatchSlot(const std::string& address) {
  absl::MutexLock lock(&watch_mu_);
  if (watchers_ >= limits_.max_total) {
    return WatchRefusal::kTooManyWatchers;
  }
  int& from_address = watchers_by_address_[address];
  if (from_address >= limits_.max_per_address) {
    return WatchRefusal::kTooManyFromAddress;
  }
  ++from_address;
  ++watchers_;
  return std::nullopt;
}

void CaService::ReleaseWatchSlot(const std::string& address) {
  absl::MutexLock lock(&watch_mu_);
  --watchers_;
  auto it = watchers_by_address_.find(address);
  if (it != watchers_by_address_.end() && --it->second <= 0) {
    watchers_by_address_.erase(it);
  }
}

grpc::ServerWriteReactor<meshtls::ca::v1::TrustBundle>* CaService::WatchTrustBundle(
    grpc::CallbackServerContext* context, const WatchTrustBundleRequest*) {
  // The same credentials as Sign: an open stream costs memory for as long as the caller likes,
  // so only mesh members (or workloads about to become one) may hold one.
  const CallerCredentials credentials = ExtractCredentials(*context);
  absl::StatusOr<pki::SpiffeId> id = authenticator_.Authenticate(credentials);
  if (!id.ok()) {
    const bool denied = absl::IsPermissionDenied(id.status());
    metrics_.RecordWatchRefused(denied ? WatchRefusal::kPermissionDenied
                                       : WatchRefusal::kUnauthenticated);
    if (MayLogRefusal()) {
      base::LogWarning("trust bundle watch refused",
                       {{"peer", context->peer()},
                        {"credential", CredentialKind(credentials)},
                        {"error", std::string(id.status().message())}});
    }
    return new RefusedWatch(grpc::Status(
        denied ? grpc::StatusCode::PERMISSION_DENIED : grpc::StatusCode::UNAUTHENTICATED,
        std::string(id.status().message())));
  }
  const std::string address = PeerAddress(context->peer());
  if (std::optional<WatchRefusal> refusal = ReserveWatchSlot(address)) {
    metrics_.RecordWatchRefused(*refusal);
    const std::string why =
        *refusal == WatchRefusal::kTooManyWatchers
            ? absl::StrCat("certmgr holds ", limits_.max_total, " trust bundle streams already")
            : absl::StrCat(address, " holds ", limits_.max_per_address,
                           " trust bundle streams already");
    if (MayLogRefusal()) {
      base::LogWarning("trust bundle watch refused",
                       {{"peer", context->peer()}, {"spiffe_id", id->str()}, {"error", why}});
    }
    return new RefusedWatch(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, why));
  }
  return new BundleWriter(bundle_, metrics_, [this, address] { ReleaseWatchSlot(address); });
}

}  // namespace meshtls::certmgr
