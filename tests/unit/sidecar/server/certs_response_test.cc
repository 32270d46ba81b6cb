#include "sidecar/server/certs_response.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls::sidecar {
namespace {

using ::testing::HasSubstr;
using testing::IsOk;

constexpr char kId[] = "spiffe://mesh.test/ns/a/sa/b";

TEST(CertsJsonTest, BeforeTheFirstCertificateOnlyTheIdentityIsThereAsNull) {
  absl::StatusOr<std::string> json = CertsJson(nullptr, IdentityStatus{});
  ASSERT_THAT(json, IsOk());
  EXPECT_EQ(*json, "{\"identity\":null}\n");
}

TEST(CertsJsonTest, DescribesTheServedContextWithTheKeysOfTheAdminApi) {
  const absl::Time now = absl::FromUnixSeconds(1'800'000'000);
  testing::TestCa ca("mesh.test", now - absl::Hours(1));
  testing::IssuedLeaf leaf = ca.Issue(kId, absl::Hours(2), now - absl::Minutes(5));
  pki::CredentialBundle bundle{.chain = leaf.chain,
                               .key = leaf.key,
                               .trust_bundle = {ca.root()},
                               .bundle_sequence = 1'764'796'800'123'450};
  absl::StatusOr<std::shared_ptr<const TlsContext>> context =
      TlsContext::Create(bundle, "mesh.test", TlsSettings{}, 7);
  ASSERT_THAT(context, IsOk());
  const IdentityStatus status{.renewal_due = now + absl::Seconds(30) + absl::Milliseconds(400),
                              .last_error = "certmgr said \"no\""};

  absl::StatusOr<std::string> json = CertsJson(context->get(), status);
  ASSERT_THAT(json, IsOk());
  // The keys, their order and the times are what the hand-written JSON had; only the 64-bit
  // numbers are strings, as proto3 JSON prints them.
  const std::string root_not_after =
      absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", ca.root().not_after(), absl::UTCTimeZone());
  EXPECT_EQ(*json,
            absl::StrCat(R"({"identity":")", kId, R"(","serial":")", leaf.chain[0].SerialHex(),
                         R"(","not_before":"2027-01-15T07:53:00Z")",
                         R"(,"not_after":"2027-01-15T09:55:00Z")",
                         R"(,"renewal_due":"2027-01-15T08:00:30Z")",  // to the second
                         R"(,"last_renewal_error":"certmgr said \"no\"")",
                         R"(,"trust_bundle":{"sequence":"1764796800123450","roots":[{"subject":")",
                         ca.root().SubjectText(), R"(","sha256":")", ca.root().Sha256Fingerprint(),
                         R"(","not_after":")", root_not_after, R"("}]})",
                         R"(,"tls_context_generation":"7"})", "\n"));
}

TEST(CertsJsonTest, UnknownTimesAreNullAndAnEmptyErrorIsStillThere) {
  testing::TestCa ca("mesh.test");
  testing::IssuedLeaf leaf = ca.Issue(kId);
  absl::StatusOr<std::shared_ptr<const TlsContext>> context = TlsContext::Create(
      pki::CredentialBundle{
          .chain = leaf.chain, .key = leaf.key, .trust_bundle = {ca.root()}, .bundle_sequence = 1},
      "mesh.test", TlsSettings{}, 1);
  ASSERT_THAT(context, IsOk());
  absl::StatusOr<std::string> json = CertsJson(context->get(), IdentityStatus{});
  ASSERT_THAT(json, IsOk());
  EXPECT_THAT(*json, HasSubstr("\"renewal_due\":null"));
  EXPECT_THAT(*json, HasSubstr("\"last_renewal_error\":\"\""));
  EXPECT_THAT(*json, HasSubstr("\"sequence\":\"1\""));

  // An error relayed from elsewhere may hold any bytes; the body stays UTF-8 and loses none.
  json = CertsJson(context->get(), IdentityStatus{.last_error = "bad \xff byte"});
  ASSERT_THAT(json, IsOk());
  EXPECT_THAT(*json, HasSubstr("\"last_renewal_error\":\"bad \xef\xbf\xbd byte\""));
  EXPECT_EQ(json->rfind("{\"identity\":\"spiffe://", 0), 0u) << *json;
}

}  // namespace
}  // namespace meshtls::sidecar
