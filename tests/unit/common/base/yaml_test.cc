#include "common/base/yaml.h"

#include <gtest/gtest.h>

#include "common/base/host_port.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::base {
namespace {

using testing::IsOk;
using testing::StatusIs;

TEST(YamlTest, ParsesTheSubsetConfigsUse) {
  absl::StatusOr<YamlNode> doc = ParseYaml(R"(---
# comment
a: 1
b: "two # not a comment"   # comment
c: 'it''s'
nested:
  x: [p, "q", {k: v}]
  y: {m: 1, n: [2, 3]}
list:
- first
- name: second
  extra: true
  inner:
    - deep
multi: [one,
        two, # comment inside
        three]
empty:
tilde: ~
)");
  ASSERT_THAT(doc, IsOk());
  EXPECT_EQ(doc->Find("a")->scalar, "1");
  EXPECT_EQ(doc->Find("b")->scalar, "two # not a comment");
  EXPECT_TRUE(doc->Find("b")->quoted);
  EXPECT_EQ(doc->Find("c")->scalar, "it's");
  const YamlNode* x = doc->Find("nested")->Find("x");
  ASSERT_EQ(x->items.size(), 3u);
  EXPECT_EQ(x->items[2].Find("k")->scalar, "v");
  EXPECT_EQ(doc->Find("nested")->Find("y")->Find("n")->items[1].scalar, "3");
  const YamlNode* list = doc->Find("list");
  ASSERT_EQ(list->items.size(), 2u);
  EXPECT_EQ(list->items[0].scalar, "first");
  EXPECT_EQ(list->items[1].Find("name")->scalar, "second");
  EXPECT_EQ(list->items[1].Find("inner")->items[0].scalar, "deep");
  EXPECT_EQ(doc->Find("multi")->items.size(), 3u);
  EXPECT_EQ(doc->Find("empty")->kind, YamlNode::Kind::kNull);
  EXPECT_EQ(doc->Find("tilde")->kind, YamlNode::Kind::kNull);
}

TEST(YamlTest, ErrorsNameTheLine) {
  EXPECT_THAT(ParseYaml("a: 1\na: 2\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, "line 2: duplicate key"));
  EXPECT_THAT(ParseYaml("a:\n\tb: 1\n"), StatusIs(absl::StatusCode::kInvalidArgument, "tabs"));
  EXPECT_THAT(ParseYaml("a: &x 1\n"), StatusIs(absl::StatusCode::kInvalidArgument, "anchors"));
  EXPECT_THAT(ParseYaml("a: |\n  text\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, "block scalars"));
  EXPECT_THAT(ParseYaml("a: [1, 2\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, "unterminated"));
  EXPECT_THAT(ParseYaml("a: \"open\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, "unterminated"));
  EXPECT_THAT(ParseYaml("a: 1\n  b: 2\n"), StatusIs(absl::StatusCode::kInvalidArgument, "line 2"));
  EXPECT_THAT(ParseYaml("a: 1\n---\nb: 2\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, "one YAML document"));
  EXPECT_THAT(ParseYaml(std::string("a: \0", 4)),
              StatusIs(absl::StatusCode::kInvalidArgument, "NUL"));
}

TEST(YamlTest, DeepNestingIsAnErrorNotACrash) {
  std::string deep(10000, '[');
  EXPECT_THAT(ParseYaml("a: " + deep), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string block;
  for (int i = 0; i < 100; ++i) {
    block += std::string(static_cast<size_t>(i), ' ') + "k:\n";
  }
  EXPECT_THAT(ParseYaml(block), StatusIs(absl::StatusCode::kInvalidArgument, "too deep"));
}

TEST(ConfigMapTest, ReportsUnknownFieldsWithTheirPath) {
  YamlNode doc = *ParseYaml("limits:\n  handshake_timeout: 10s\n  idle_timout: 1h\n");
  ConfigMap top = *ConfigMap::Of(doc, "");
  ConfigMap limits = *ConfigMap::Of(*top.Take("limits"), "limits");
  EXPECT_THAT(ReadDuration(*limits.Take("handshake_timeout"), "limits.handshake_timeout"), IsOk());
  EXPECT_THAT(limits.Finish(), StatusIs(absl::StatusCode::kInvalidArgument,
                                        "limits.idle_timout: unknown field (line 3)"));
}

TEST(ConfigMapTest, TypedReaders) {
  YamlNode doc = *ParseYaml("d: 0s\nb: yes\nn: 1.5\ni: 70000\nq: \"true\"\n");
  EXPECT_THAT(ReadDuration(*doc.Find("d"), "d"),
              StatusIs(absl::StatusCode::kInvalidArgument, "positive"));
  EXPECT_THAT(ReadBool(*doc.Find("b"), "b"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ReadBool(*doc.Find("q"), "q"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(*ReadNumber(*doc.Find("n"), "n"), 1.5);
  EXPECT_THAT(ReadInt(*doc.Find("i"), "i", 0, 65535),
              StatusIs(absl::StatusCode::kInvalidArgument, "0 to 65535"));
}

TEST(HostPortTest, ParsesAndRejects) {
  EXPECT_EQ(ParseHostPort("127.0.0.1:80")->host, "127.0.0.1");
  EXPECT_TRUE(ParseHostPort("[::1]:15443")->is_ipv6);
  EXPECT_EQ(ParseHostPort("[::1]:15443")->ToString(), "[::1]:15443");
  EXPECT_FALSE(ParseHostPort("orders.default.svc:15443")->host_is_ip);
  EXPECT_THAT(ParseHostPort("127.0.0.1"),
              StatusIs(absl::StatusCode::kInvalidArgument, "host:port"));
  EXPECT_THAT(ParseHostPort("::1:80"), StatusIs(absl::StatusCode::kInvalidArgument, "brackets"));
  EXPECT_THAT(ParseHostPort("host:99999"), StatusIs(absl::StatusCode::kInvalidArgument, "port"));
  EXPECT_THAT(ParseHostPort("host:0"), StatusIs(absl::StatusCode::kInvalidArgument, "port 0"));
  EXPECT_THAT(ParseHostPort("ho st:1"), StatusIs(absl::StatusCode::kInvalidArgument, "host name"));
  EXPECT_THAT(ParseHostPort("[1.2.3.4]:1"), StatusIs(absl::StatusCode::kInvalidArgument, "IPv6"));
}

}  // namespace
}  // namespace meshtls::base
