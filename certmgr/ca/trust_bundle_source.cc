#include "certmgr/ca/trust_bundle_source.h"

namespace meshtls::certmgr {

TrustBundleSource::TrustBundleSource(std::string trust_domain, std::vector<pki::Certificate> roots,
                                     uint64_t sequence) {
  auto bundle = std::make_shared<TrustBundle>();
  bundle->trust_domain = std::move(trust_domain);
  bundle->roots = std::move(roots);
  bundle->sequence = sequence;
  current_ = std::move(bundle);
}

std::shared_ptr<const TrustBundle> TrustBundleSource::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

void TrustBundleSource::UpdateTo(std::vector<pki::Certificate> roots, uint64_t sequence) {
  std::vector<std::shared_ptr<std::function<void()>>> to_notify;
  {
    absl::MutexLock lock(&mu_);
    if (sequence <= current_->sequence) {
      return;
    }
    auto bundle = std::make_shared<TrustBundle>();
    bundle->trust_domain = current_->trust_domain;
    bundle->roots = std::move(roots);
    bundle->sequence = sequence;
    current_ = std::move(bundle);
    for (const auto& [id, callback] : subscribers_) {
      to_notify.push_back(callback);
    }
  }
  for (const auto& callback : to_notify) {
    (*callback)();
  }
}

TrustBundleSource::SubscriptionId TrustBundleSource::Subscribe(std::function<void()> on_change) {
  absl::MutexLock lock(&mu_);
  SubscriptionId id = next_id_++;
  subscribers_.emplace(id, std::make_shared<std::function<void()>>(std::move(on_change)));
  return id;
}

void TrustBundleSource::Unsubscribe(SubscriptionId id) {
  absl::MutexLock lock(&mu_);
  subscribers_.erase(id);
}

size_t TrustBundleSource::subscriber_count() const {
  absl::MutexLock lock(&mu_);
  return subscribers_.size();
}

}  // namespace meshtls::certmgr
