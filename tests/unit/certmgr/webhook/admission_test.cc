#include "certmgr/webhook/admission.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/config/yaml_tree.h"

namespace meshtls::webhook {
namespace {

using ::testing::HasSubstr;

std::string ReviewOf(absl::string_view object, absl::string_view kind = "Pod",
                     absl::string_view operation = "CREATE") {
  return absl::StrCat(
      R"({"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1",)",
      R"("kind":{"group":"","version":"v1","kind":")", kind, R"("},"operation":")", operation,
      R"(","namespace":"shop","object":)", object, "}}");
}

config::YamlNode Json(absl::string_view text) {
  absl::StatusOr<std::vector<config::YamlNode>> d = config::ParseYamlStream(text, 1 << 20);
  EXPECT_TRUE(d.ok() && d->size() == 1) << text;
  return d.ok() && !d->empty() ? (*d)[0] : config::YamlNode{};
}

constexpr absl::string_view kPod =
    R"({"metadata":{"generateName":"web-","annotations":{"a~b/c":"1"}},)"
    R"("spec":{"containers":[{"name":"app","ports":[{"containerPort":8080}]}]}})";

TEST(AdmissionTest, APodIsInjectedByAPatchAndAnsweredWithItsUid) {
  absl::StatusOr<Review> review = AdmitPod(inject::MeshSettings{}, ReviewOf(kPod), 1 << 20);
  ASSERT_TRUE(review.ok()) << review.status();
  EXPECT_EQ(review->result, ReviewResult::kInjected);
  const config::YamlNode answer = Json(review->response_json);
  EXPECT_THAT(config::EmitJson(answer),
              HasSubstr(R"("response":{"uid":"u-1","allowed":true,"patchType":"JSONPatch")"));
  std::string patch;
  for (const auto& e : answer.entries[2].value.entries) {
    if (e.key == "patch") {
      ASSERT_TRUE(absl::Base64Unescape(e.value.scalar, &patch));
    }
  }
  // Keys are JSON Pointer tokens: "/" and "~" escaped.
  EXPECT_THAT(patch, HasSubstr(R"("path":"/metadata/labels")"));
  EXPECT_THAT(patch, HasSubstr(R"("path":"/metadata/annotations/meshtls.io~1sidecar-config")"));
  EXPECT_THAT(
      patch,
      HasSubstr(R"({"op":"add","path":"/spec/initContainers","value":[{"name":"meshtls-init")"));
}

TEST(AdmissionTest, AnUpdateMayNotChangeTheSidecarConfig) {
  auto update = [](absl::string_view old_config, absl::string_view new_config) {
    auto object = [](absl::string_view config) {
      return absl::StrCat(
          R"({"metadata":{"labels":{"x":"1"},"annotations":{)",
          config.empty() ? "" : absl::StrCat(R"("meshtls.io/sidecar-config":")", config, "\""),
          R"(}},"spec":{}})");
    };
    std::string body = ReviewOf(object(new_config), "Pod", "UPDATE");
    body.insert(body.size() - 2, absl::StrCat(R"(,"oldObject":)", object(old_config)));
    return AdmitPod(inject::MeshSettings{}, body, 1 << 20);
  };
  absl::StatusOr<Review> same = update("a: 1", "a: 1");
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->result, ReviewResult::kUnchanged);
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"a: 1", "a: 2"}, {"a: 1", ""}, {"", "a: 1"}}) {
    absl::StatusOr<Review> changed = update(from, to);
    ASSERT_TRUE(changed.ok()) << changed.status();
    EXPECT_EQ(changed->result, ReviewResult::kRefused) << from << " -> " << to;
    EXPECT_THAT(changed->response_json, HasSubstr("is set when the pod is created"));
  }
}

TEST(AdmissionTest, AHugeBodyOfTinyValuesIsRefusedNotParsedWhole) {
  std::string values = "0";
  for (int i = 0; i < 200000; ++i) {
    values += ",0";
  }
  absl::StatusOr<Review> review = AdmitPod(
      inject::MeshSettings{}, ReviewOf(absl::StrCat(R"({"spec":{"x":[)", values, "]}}")), 4 << 20);
  ASSERT_FALSE(review.ok());
  EXPECT_THAT(review.status().message(), HasSubstr("too many nodes"));
}

TEST(AdmissionTest, OtherObjectsAndOperationsAndOptedOutPodsPassUnchanged) {
  for (const std::string& body :
       {ReviewOf(kPod, "Service"), ReviewOf(kPod, "Pod", "UPDATE"),
        ReviewOf(R"({"metadata":{"labels":{"meshtls.io/inject":"disabled"}},"spec":{}})")}) {
    absl::StatusOr<Review> review = AdmitPod(inject::MeshSettings{}, body, 1 << 20);
    ASSERT_TRUE(review.ok()) << review.status();
    EXPECT_EQ(review->result, ReviewResult::kUnchanged);
    EXPECT_THAT(review->response_json, HasSubstr(R"("allowed":true)"));
    EXPECT_THAT(review->response_json, ::testing::Not(HasSubstr("patch")));
  }
}

TEST(AdmissionTest, APodThatCannotBeMeshedIsRefusedWithTheReason) {
  absl::StatusOr<Review> review = AdmitPod(
      inject::MeshSettings{},
      ReviewOf(R"({"metadata":{"name":"agent"},"spec":{"hostNetwork":true,"containers":[]}})"),
      1 << 20);
  ASSERT_TRUE(review.ok()) << review.status();
  EXPECT_EQ(review->result, ReviewResult::kRefused);
  EXPECT_THAT(review->response_json, HasSubstr(R"("allowed":false,"status":{"code":403)"));
  EXPECT_THAT(review->response_json,
              HasSubstr("meshtls cannot mesh pod shop/agent: hostNetwork pods cannot be meshed"));
}

TEST(AdmissionTest, MalformedBodiesAreErrorsNamingWhatIsWrong) {
  const std::pair<std::string, std::string> cases[] = {
      {"{", "the body is not JSON"},
      {"[1]", "not one JSON object"},
      {R"({"apiVersion":"v1","kind":"Pod"})", "not an admission.k8s.io/v1 AdmissionReview"},
      {R"({"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}})",
       "no request.uid"},
  };
  for (const auto& [body, message] : cases) {
    absl::StatusOr<Review> review = AdmitPod(inject::MeshSettings{}, body, 1 << 20);
    ASSERT_FALSE(review.ok()) << body;
    EXPECT_THAT(review.status().message(), HasSubstr(message)) << body;
  }
}

TEST(JsonPatchTest, AddsRemovesReplacesAndRecursesIntoListsOfTheSameLength) {
  const config::YamlNode from = Json(R"({"a":1,"b":{"c":[1,2],"d":"x"},"e":[1]})");
  const config::YamlNode to = Json(R"({"a":2,"b":{"c":[1,3]},"e":[1,2],"f/g":null})");
  EXPECT_EQ(
      JsonPatch(from, to),
      R"([{"op":"replace","path":"/a","value":2},{"op":"remove","path":"/b/d"},)"
      R"({"op":"replace","path":"/b/c/1","value":3},{"op":"replace","path":"/e","value":[1,2]},)"
      R"({"op":"add","path":"/f~1g","value":null}])");
  EXPECT_EQ(JsonPatch(from, from), "[]");
  // RFC 6901: "~" is written "~0" and "/" "~1", "~" first.
  EXPECT_EQ(JsonPatch(Json(R"({"a~/b":1})"), Json(R"({"a~/b":2})")),
            R"([{"op":"replace","path":"/a~0~1b","value":2}])");
}

}  // namespace
}  // namespace meshtls::webhook
