#include "certmgr/server/certmgr_metrics.h"

namespace meshtls::certmgr {

CertmgrMetrics::CertmgrMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& requests = prometheus::BuildCounter()
                       .Name("meshtls_certmgr_sign_requests_total")
                       .Help("Sign requests by result.")
                       .Register(*registry_);
  constexpr const char* kResults[kSignResultCount] = {
      "success", "unauthenticated", "permission_denied", "invalid_csr", "internal"};
  for (int i = 0; i < kSignResultCount; ++i) {
    sign_requests_[i] = &requests.Add({{"result", kResults[i]}});
  }
  sign_duration_ = &prometheus::BuildHistogram()
                        .Name("meshtls_certmgr_sign_duration_seconds")
                        .Help("Time to authenticate and sign one request.")
                        .Register(*registry_)
                        .Add({}, prometheus::Histogram::BucketBoundaries{
                                     0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10});
  ca_not_after_ = &prometheus::BuildGauge()
                       .Name("meshtls_certmgr_ca_not_after_timestamp_seconds")
                       .Help("NotAfter of the signing CA certificate, Unix seconds.")
                       .Register(*registry_)
                       .Add({});
  watchers_ = &prometheus::BuildGauge()
                   .Name("meshtls_certmgr_trust_bundle_watchers")
                   .Help("Open WatchTrustBundle streams.")
                   .Register(*registry_)
                   .Add({});
  auto& refused = prometheus::BuildCounter()
                      .Name("meshtls_certmgr_trust_bundle_watch_refused_total")
                      .Help("WatchTrustBundle streams refused, by reason.")
                      .Register(*registry_);
  constexpr const char* kReasons[kWatchRefusalCount] = {
      "unauthenticated", "permission_denied", "too_many_watchers", "too_many_from_address"};
  for (int i = 0; i < kWatchRefusalCount; ++i) {
    watch_refused_[i] = &refused.Add({{"reason", kReasons[i]}});
  }
  join_token_file_usable_ =
      &prometheus::BuildGauge()
           .Name("meshtls_certmgr_join_token_file_usable")
           .Help(
               "0 while the join token file is refused whole (writable by group or others, "
               "unreadable); 1 otherwise.")
           .Register(*registry_)
           .Add({});
  join_token_file_usable_->Set(1);
  join_token_file_rejected_lines_ =
      &prometheus::BuildGauge()
           .Name("meshtls_certmgr_join_token_file_rejected_lines")
           .Help("Malformed lines refused in the join token file as loaded last.")
           .Register(*registry_)
           .Add({});
  config_reload_successful_ =
      &prometheus::BuildGauge()
           .Name("meshtls_certmgr_config_last_reload_successful")
           .Help("1 when the last reload of the config file applied, 0 when it was refused.")
           .Register(*registry_)
           .Add({});
  config_reload_successful_->Set(1);
  auto& reviews = prometheus::BuildCounter()
                      .Name("meshtls_certmgr_admission_reviews_total")
                      .Help("AdmissionReviews the injection webhook answered, by result.")
                      .Register(*registry_);
  constexpr const char* kAdmissionResults[kAdmissionResultCount] = {"injected", "unchanged",
                                                                    "refused", "malformed"};
  for (int i = 0; i < kAdmissionResultCount; ++i) {
    admission_reviews_[i] = &reviews.Add({{"result", kAdmissionResults[i]}});
  }
  auto& rejected = prometheus::BuildCounter()
                       .Name("meshtls_certmgr_webhook_rejected_total")
                       .Help(
                           "Webhook connections closed or requests refused before any review, "
                           "by reason.")
                       .Register(*registry_);
  for (int i = 0; i < kWebhookRejectionCount; ++i) {
    webhook_rejected_[i] = &rejected.Add({{"reason", kWebhookRejections[i]}});
  }
}

void CertmgrMetrics::RecordAdmissionReview(AdmissionResult result) {
  admission_reviews_[static_cast<int>(result)]->Increment();
}

void CertmgrMetrics::RecordWebhookRejected(absl::string_view reason) {
  for (int i = 0; i < kWebhookRejectionCount; ++i) {
    if (reason == kWebhookRejections[i]) {
      webhook_rejected_[i]->Increment();
    }
  }
}

void CertmgrMetrics::RecordWatchRefused(WatchRefusal reason) {
  watch_refused_[static_cast<int>(reason)]->Increment();
}

void CertmgrMetrics::SetJoinTokenFile(bool usable, int rejected_lines) {
  join_token_file_usable_->Set(usable ? 1 : 0);
  join_token_file_rejected_lines_->Set(rejected_lines);
}

void CertmgrMetrics::SetConfigReloadSuccessful(bool ok) {
  config_reload_successful_->Set(ok ? 1 : 0);
}

void CertmgrMetrics::RecordSign(SignResult result, absl::Duration elapsed) {
  sign_requests_[static_cast<int>(result)]->Increment();
  sign_duration_->Observe(absl::ToDoubleSeconds(elapsed));
}

void CertmgrMetrics::SetCaNotAfter(absl::Time not_after) {
  ca_not_after_->Set(static_cast<double>(absl::ToUnixSeconds(not_after)));
}

void CertmgrMetrics::SetWatchers(size_t count) { watchers_->Set(static_cast<double>(count)); }

}  // namespace meshtls::certmgr
