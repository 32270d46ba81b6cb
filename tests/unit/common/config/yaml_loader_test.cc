#include "common/config/yaml_loader.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/config/duration.h"
#include "common/config/yaml_tree.h"
#include "meshtls/config/v1/certmgr.pb.h"
#include "meshtls/config/v1/sidecar.pb.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::config {
namespace {

using testing::IsOk;
using testing::StatusIs;
using v1::Certmgr;
using v1::Sidecar;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

absl::Status Load(absl::string_view yaml) {
  Sidecar s;
  return LoadYaml(yaml, s).status();
}

TEST(YamlLoaderTest, MapsFieldsByNameAndAppliesDefaults) {
  Sidecar s;
  absl::StatusOr<LoadedFields> fields = LoadYaml(R"(trust_domain: example.org
identity:
  certmgr: {address: a:1, server_ca: ca.pem}
inbound:
  - name: http
    listen: 0.0.0.0:15443
    forward: 127.0.0.1:8080
    allow: spiffe://example.org/a   # one value for a list of one
limits: {idle_timeout: 1h30m, handshake_timeout: 500ms}
)",
                                                 s);
  ASSERT_THAT(fields, IsOk());
  EXPECT_EQ(s.trust_domain(), "example.org");
  ASSERT_TRUE(s.identity().has_certmgr());
  EXPECT_EQ(s.identity().certmgr().address(0), "a:1");
  EXPECT_EQ(s.identity().certmgr().renew_at(), 0.5) << "default inside a written section";
  ASSERT_EQ(s.inbound_size(), 1);
  EXPECT_EQ(s.inbound(0).allow_size(), 1);
  EXPECT_EQ(ToDuration(s.limits().idle_timeout()), absl::Minutes(90));
  EXPECT_EQ(ToDuration(s.limits().handshake_timeout()), absl::Milliseconds(500));
  EXPECT_EQ(ToDuration(s.limits().drain_timeout()), absl::Seconds(30));
  // Sections absent from the document carry their defaults too.
  EXPECT_EQ(s.admin().listen(), "127.0.0.1:15000");
  EXPECT_TRUE(s.tls().session_resumption());
  EXPECT_EQ(s.tls().min_version(), "1.3");
  EXPECT_EQ(ToDuration(s.dns().max_ttl()), absl::Minutes(5));
  EXPECT_EQ(s.log().level(), "info");
  EXPECT_FALSE(s.identity().has_files()) << "a oneof member is never made up";
  // Where each field was written.
  EXPECT_TRUE(fields->Has("identity.certmgr.server_ca"));
  EXPECT_FALSE(fields->Has("tls"));
  EXPECT_EQ(fields->Line("inbound[0].allow"), 8);
  EXPECT_EQ(fields->Line("limits.drain_timeout"), 9) << "an absent field: its section's line";
  EXPECT_THAT(fields->Error("tls.min_version", "bad"), StatusIs(kInvalid, "tls.min_version: bad"));
}

TEST(YamlLoaderTest, ListDefaultsAndZeroDurations) {
  Certmgr c;
  ASSERT_THAT(LoadYaml("trust_domain: a\nissuance: {backdate: 0}\n", c), IsOk());
  EXPECT_EQ(std::vector<std::string>(c.server_ips().begin(), c.server_ips().end()),
            (std::vector<std::string>{"127.0.0.1", "::1"}));
  EXPECT_EQ(ToDuration(c.issuance().backdate()), absl::ZeroDuration());
  EXPECT_EQ(ToDuration(c.ca().ttl()), absl::Hours(87600));
  ASSERT_THAT(LoadYaml("trust_domain: a\nserver_ips: []\n", c), IsOk());
  EXPECT_EQ(c.server_ips_size(), 0) << "an empty list written is not the default";
}

TEST(YamlLoaderTest, WhatTheHandWrittenParserGotWrong) {
  Sidecar s;
  ASSERT_THAT(LoadYaml("\xEF\xBB\xBFtrust_domain: a\n", s), IsOk()) << "a UTF-8 BOM";
  EXPECT_EQ(s.trust_domain(), "a");
  ASSERT_THAT(LoadYaml("--- # the sidecar\ntrust_domain: b\n", s), IsOk());
  EXPECT_EQ(s.trust_domain(), "b");
  ASSERT_THAT(LoadYaml("trust_domain: c\r\nworkers: 2\r\n", s), IsOk());
  EXPECT_EQ(s.workers(), 2);
}

TEST(YamlLoaderTest, RefusesWithTheFieldAndLine) {
  EXPECT_THAT(Load("limits:\n  handshake_timeout: 10s\n  idle_timout: 1h\n"),
              StatusIs(kInvalid, "limits.idle_timout: unknown field (line 3)"));
  EXPECT_THAT(Load("trust_domain: a\nworker: 1\n"),
              StatusIs(kInvalid, "worker: unknown field (line 2)"));
  EXPECT_THAT(Load("workers: [1]\n"),
              StatusIs(kInvalid, "workers: must be a whole number from 0 to 256 (line 1)"));
  EXPECT_THAT(Load("workers: \"3\"\n"), StatusIs(kInvalid, "workers: must be a whole number"));
  EXPECT_THAT(Load("workers: 257\n"), StatusIs(kInvalid, "from 0 to 256"));
  EXPECT_THAT(Load("tls: 3\n"), StatusIs(kInvalid, "tls: must be a mapping, not a value (line 1)"));
  EXPECT_THAT(Load("trust_domain: {a: 1}\n"),
              StatusIs(kInvalid, "trust_domain: must be a string, not a mapping (line 1)"));
  EXPECT_THAT(Load("tls: {session_resumption: yes}\n"),
              StatusIs(kInvalid, "tls.session_resumption: must be true or false (line 1)"));
  EXPECT_THAT(Load("tls: {session_resumption: \"true\"}\n"),
              StatusIs(kInvalid, "must be true or false"));
  EXPECT_THAT(Load("identity:\n  certmgr: {renew_at: high}\n"),
              StatusIs(kInvalid, "identity.certmgr.renew_at: must be a number (line 2)"));
  EXPECT_THAT(
      Load("identity:\n  certmgr: {renew_at: 0.95}\n"),
      StatusIs(kInvalid, "identity.certmgr.renew_at: must be between 0.1 and 0.9 (line 2)"));
  EXPECT_THAT(Load("inbound: {name: a}\n"),
              StatusIs(kInvalid, "inbound: must be a list, not a mapping (line 1)"));
  EXPECT_THAT(Load("inbound:\n  - [b]\n"),
              StatusIs(kInvalid, "inbound[0]: must be a mapping, not a list (line 2)"));
  EXPECT_THAT(Load("dns: {servers: [a, {b: c}]}\n"),
              StatusIs(kInvalid, "dns.servers[1]: must be a string, not a mapping (line 1)"));
  EXPECT_THAT(Load("- a\n"), StatusIs(kInvalid, "(top level): must be a mapping, not a list"));
}

TEST(YamlLoaderTest, RequiredAndOneOf) {
  EXPECT_THAT(Load("workers: 1\n"), StatusIs(kInvalid, "trust_domain: required"));
  EXPECT_THAT(Load("trust_domain: a\nidentity:\n  certmgr: {server_ca: x}\n"),
              StatusIs(kInvalid, "identity.certmgr.address: required (line 3)"));
  EXPECT_THAT(Load("trust_domain: a\ninbound:\n  - name: x\n    listen: 1.2.3.4:1\n"),
              StatusIs(kInvalid, "inbound[0].forward: required (line 3)"));
  EXPECT_THAT(Load("trust_domain: a\nidentity:\n  files: {}\n"),
              StatusIs(kInvalid, "identity.files.cert: required (line 3)"));
  EXPECT_THAT(
      Load("trust_domain: a\nidentity:\n  certmgr: {address: a:1, server_ca: x}\n  files: {}\n"),
      StatusIs(kInvalid, "identity: set exactly one of certmgr or files (line 4)"));
}

TEST(YamlLoaderTest, Durations) {
  EXPECT_THAT(Load("limits: {idle_timeout: ten}\n"),
              StatusIs(kInvalid, "limits.idle_timeout: must be a positive duration such as 500ms"));
  EXPECT_THAT(Load("limits: {idle_timeout: 0s}\n"), StatusIs(kInvalid, "positive duration"));
  EXPECT_THAT(Load("limits: {idle_timeout: -1s}\n"), StatusIs(kInvalid, "positive duration"));
  EXPECT_THAT(Load("limits: {idle_timeout: inf}\n"), StatusIs(kInvalid, "positive duration"));
  EXPECT_THAT(Load("limits: {idle_timeout: 100000000h}\n"),
              StatusIs(kInvalid, "limits.idle_timeout: is longer than 10000 years"));
  EXPECT_THAT(Load("dns: {max_ttl: 48h}\n"),
              StatusIs(kInvalid, "dns.max_ttl: must be between 1s and 24h (line 1)"));
  Certmgr c;
  EXPECT_THAT(LoadYaml("trust_domain: a\nca: {ttl: 30m}\n", c),
              StatusIs(kInvalid, "ca.ttl: must be at least 1h (line 2)"));
  EXPECT_THAT(LoadYaml("trust_domain: a\nissuance: {backdate: -1s}\n", c),
              StatusIs(kInvalid, "issuance.backdate: must be a duration such as 0"));
}

TEST(YamlTreeTest, RefusesWhatConfigsNeverNeed) {
  EXPECT_THAT(Load("a: 1\na: 2\n"), StatusIs(kInvalid, "line 2: duplicate key \"a\""));
  EXPECT_THAT(Load("tls: {a: 1, a: 2}\n"), StatusIs(kInvalid, "line 1: duplicate key"));
  EXPECT_THAT(Load("trust_domain: &x a\n"), StatusIs(kInvalid, "line 1: anchors"));
  EXPECT_THAT(Load("a: &x 1\nb: *x\n"), StatusIs(kInvalid, "anchors, aliases and tags"));
  EXPECT_THAT(Load("trust_domain: !!str a\n"), StatusIs(kInvalid, "anchors, aliases and tags"));
  EXPECT_THAT(Load("? [a]\n: 1\n"), StatusIs(kInvalid, "a key must be a plain or quoted string"));
  EXPECT_THAT(Load("a: 1\n---\nb: 2\n"), StatusIs(kInvalid, "line 2: only one YAML document"));
  EXPECT_THAT(Load("a:\n\tb: 1\n"), StatusIs(kInvalid, "tabs are not allowed"));
  EXPECT_THAT(Load("a: [1, 2\n"), StatusIs(kInvalid, "line "));
  EXPECT_THAT(Load("a: \"open\n"), StatusIs(kInvalid, "line "));
  EXPECT_THAT(Load(std::string("a: \0", 4)), StatusIs(kInvalid, "NUL"));
  EXPECT_THAT(Load(std::string((1 << 20) + 1, ' ')), StatusIs(kInvalid, "larger than 1 MiB"));
}

TEST(YamlTreeTest, NestingIsBounded) {
  EXPECT_THAT(Load("a: " + std::string(10000, '[') + std::string(10000, ']') + "\n"),
              StatusIs(kInvalid, "nesting is too deep"));
  std::string block;
  for (int i = 0; i < 100; ++i) {
    block += std::string(static_cast<size_t>(i), ' ') + "k:\n";
  }
  EXPECT_THAT(ParseYamlTree(block), StatusIs(kInvalid, "nesting is too deep"));
  std::string flow = "a: " + std::string(40, '[') + std::string(40, ']') + "\n";
  EXPECT_THAT(ParseYamlTree(flow), StatusIs(kInvalid, "line 1: nesting is too deep"));
  std::string ok = "a: " + std::string(30, '[') + std::string(30, ']') + "\n";
  EXPECT_THAT(ParseYamlTree(ok), IsOk());
}

TEST(YamlTreeTest, ADocumentAtTheSizeLimitIsRead) {
  // Nearly 1 MiB of distinct keys in one mapping, and as many list items: parsed, then refused
  // for the first unknown field (the mapping itself is refused at its first key).
  std::string keys;
  for (int i = 0; keys.size() < (1 << 20) - 32; ++i) {
    absl::StrAppend(&keys, "k", i, ": 1\n");
  }
  absl::StatusOr<YamlNode> tree = ParseYamlTree(keys);
  ASSERT_THAT(tree, IsOk());
  EXPECT_GT(tree->entries.size(), 100000u);
  EXPECT_THAT(Load(keys), StatusIs(kInvalid, "k0: unknown field (line 1)"));
  std::string items = "trust_domain: a\ndns:\n  servers:\n";
  while (items.size() < (1 << 20) - 32) {
    items += "  - 10.0.0.1\n";
  }
  Sidecar s;
  ASSERT_THAT(LoadYaml(items, s), IsOk());
  EXPECT_GT(s.dns().servers_size(), 50000);
}

TEST(YamlTreeTest, FindKeyAndScalarAtTakeAnyShape) {
  absl::StatusOr<YamlNode> tree = ParseYamlTree("a: {b: x, l: [1], n: null}\ns: plain\n");
  ASSERT_TRUE(tree.ok()) << tree.status();
  const YamlNode* a = FindKey(&*tree, "a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(ScalarAt(a, "b"), "x");
  EXPECT_EQ(ScalarAt(a, "l"), std::nullopt);  // a list
  EXPECT_EQ(ScalarAt(a, "n"), std::nullopt);  // null
  EXPECT_EQ(ScalarAt(a, "missing"), std::nullopt);
  EXPECT_EQ(FindKey(FindKey(&*tree, "s"), "b"), nullptr);  // a scalar is no mapping
  EXPECT_EQ(FindKey(static_cast<const YamlNode*>(nullptr), "a"), nullptr);
  EXPECT_EQ(ScalarAt(nullptr, "a"), std::nullopt);
}

TEST(YamlStreamTest, ReadsEveryDocumentInOrder) {
  absl::StatusOr<std::vector<YamlNode>> docs =
      ParseYamlStream("a: 1\n---\n---\n# comment\n---\n- x\n", 1 << 20);
  ASSERT_THAT(docs, IsOk());
  ASSERT_EQ(docs->size(), 4u) << "a, two empty documents (one only a comment), the list";
  EXPECT_EQ((*docs)[0].entries[0].key, "a");
  EXPECT_EQ((*docs)[1].kind, YamlNode::Kind::kNull);
  EXPECT_EQ((*docs)[2].kind, YamlNode::Kind::kNull);
  EXPECT_EQ((*docs)[3].items[0].scalar, "x");
  EXPECT_EQ((*docs)[3].line, 6);
  for (absl::string_view nothing : {"", "# nothing\n"}) {
    absl::StatusOr<std::vector<YamlNode>> none = ParseYamlStream(nothing, 16);
    ASSERT_THAT(none, IsOk());
    EXPECT_TRUE(none->empty()) << nothing;
  }
  EXPECT_THAT(ParseYamlStream("a: 1\n", 4), StatusIs(kInvalid, "document is larger than 4 bytes"));
  EXPECT_THAT(ParseYamlStream("a: 1\n---\nb: &x 1\n", 1 << 20),
              StatusIs(kInvalid, "line 3: anchors, aliases and tags are not supported"));
  EXPECT_THAT(ParseYamlTree("a: 1\n---\nb: 2\n"),
              StatusIs(kInvalid, "line 2: only one YAML document is allowed"));
}

TEST(YamlStreamTest, EmittedYamlReadsBackTheSame) {
  const std::string manifest =
      "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n"
      "    meshtls.io/inbound-allow: 'spiffe://x/ns/a/sa/b'\n    \"8080\": port key\n"
      "    yes: \"no\"\nspec:\n  containers:\n  - name: app\n    ports: [{containerPort: 8080}]\n"
      "    env:\n    - {name: A, value: \"true\"}\n    - {name: B, value: \"0755\"}\n"
      "    - {name: C, value: \"line one\\nline two\\n\"}\n    - {name: D, value: ''}\n"
      "    - {name: E, value: \"tab\\there: # not a comment\"}\n    - {name: F, value: \"é ✓\"}\n"
      "    args: []\n    resources: {}\n    tty: true\n    stdin: null\n"
      "---\nkind: List\nitems: [1, 2.5, -3, 1e3]\n";
  absl::StatusOr<std::vector<YamlNode>> docs = ParseYamlStream(manifest, 1 << 20);
  ASSERT_THAT(docs, IsOk());
  absl::StatusOr<std::string> written = EmitYaml(*docs);
  ASSERT_THAT(written, IsOk());
  const std::string& emitted = *written;
  absl::StatusOr<std::vector<YamlNode>> again = ParseYamlStream(emitted, 1 << 20);
  ASSERT_THAT(again, IsOk()) << emitted;
  ASSERT_EQ(again->size(), 2u) << emitted;
  // Same tree (lines aside): compared through JSON, which keeps kinds, order and quoting.
  EXPECT_EQ(EmitJson((*again)[0]), EmitJson((*docs)[0])) << emitted;
  EXPECT_EQ(EmitJson((*again)[1]), EmitJson((*docs)[1])) << emitted;
  absl::StatusOr<std::string> rewritten = EmitYaml(*again);
  ASSERT_THAT(rewritten, IsOk());
  EXPECT_EQ(*rewritten, emitted) << "emitting is stable";
  YamlNode not_utf8;
  not_utf8.kind = YamlNode::Kind::kScalar;
  not_utf8.scalar = "\xff";
  not_utf8.quoted = true;
  EXPECT_THAT(EmitYaml({not_utf8}),
              StatusIs(kInvalid, "cannot write YAML: a key or value is not valid UTF-8"));
  // Strings that would read as something else stay quoted; numbers and booleans stay plain.
  EXPECT_NE(emitted.find("value: \"true\""), std::string::npos) << emitted;
  EXPECT_NE(emitted.find("value: \"0755\""), std::string::npos) << emitted;
  EXPECT_NE(emitted.find("\"8080\": port key"), std::string::npos) << emitted;
  EXPECT_NE(emitted.find("\"yes\": \"no\""), std::string::npos) << emitted;
  EXPECT_NE(emitted.find("containerPort: 8080"), std::string::npos) << emitted;
  EXPECT_NE(emitted.find("tty: true"), std::string::npos) << emitted;
  EXPECT_NE(emitted.find("args: []"), std::string::npos) << emitted;
  EXPECT_NE(emitted.find("resources: {}"), std::string::npos) << emitted;
  EXPECT_NE(emitted.find("\n---\n"), std::string::npos) << emitted;
}

TEST(YamlStreamTest, JsonKeepsTypesAndEscapes) {
  absl::StatusOr<std::vector<YamlNode>> docs = ParseYamlStream(
      R"({"a": 1, "b": "1", "c": true, "d": "true", "e": null, "f": [1.5e3, -0.5, "x\"y\\z"],)"
      R"( "g": {}, "h": "\u00e9\n\u0001"})",
      1 << 20);
  ASSERT_THAT(docs, IsOk());
  ASSERT_EQ(docs->size(), 1u);
  EXPECT_EQ(EmitJson((*docs)[0]),
            R"({"a":1,"b":"1","c":true,"d":"true","e":null,"f":[1.5e3,-0.5,"x\"y\\z"],"g":{},)"
            R"("h":"é\n\u0001"})");
  absl::StatusOr<std::vector<YamlNode>> yaml = ParseYamlStream(
      "a: True\nb: 0755\nc: 1.\nd: hello\ne: 0x1F\nf: -0\ng: 0o17\nh: NO\n"
      "i: 089\nj: yES\nk: 0.5\nl: 0e3\n",
      1 << 20);
  ASSERT_THAT(yaml, IsOk());
  EXPECT_EQ(EmitJson((*yaml)[0]),
            R"({"a":true,"b":493,"c":"1.","d":"hello","e":31,"f":-0,"g":15,"h":false,)"
            R"("i":"089","j":"yES","k":0.5,"l":0e3})")
      << "typed as Kubernetes reads YAML; what is no number or boolean stays a string";
}

TEST(YamlTreeTest, ScalarsKeepTheirQuotingAndNulls) {
  absl::StatusOr<YamlNode> doc =
      ParseYamlTree("a: ~\nb: 'it''s'\nc: \"x # y\"  # z\nd:\ne: null\n");
  ASSERT_THAT(doc, IsOk());
  ASSERT_EQ(doc->entries.size(), 5u);
  EXPECT_EQ(doc->entries[0].value.kind, YamlNode::Kind::kNull);
  EXPECT_EQ(doc->entries[1].value.scalar, "it's");
  EXPECT_TRUE(doc->entries[1].value.quoted);
  EXPECT_EQ(doc->entries[2].value.scalar, "x # y");
  EXPECT_EQ(doc->entries[3].value.kind, YamlNode::Kind::kNull);
  EXPECT_EQ(doc->entries[4].value.kind, YamlNode::Kind::kNull);
  EXPECT_EQ(doc->entries[4].key_line, 5);
  absl::StatusOr<YamlNode> block = ParseYamlTree("a: |\n  text\n");
  ASSERT_THAT(block, IsOk());
  EXPECT_EQ(block->entries[0].value.scalar, "text\n") << "a block scalar is a string";
  EXPECT_TRUE(block->entries[0].value.quoted);
  EXPECT_EQ(ParseYamlTree("")->kind, YamlNode::Kind::kNull);
  EXPECT_EQ(ParseYamlTree(absl::string_view())->kind, YamlNode::Kind::kNull) << "no data at all";
  EXPECT_EQ(ParseYamlTree("# only a comment\n")->kind, YamlNode::Kind::kNull);
}

}  // namespace
}  // namespace meshtls::config
