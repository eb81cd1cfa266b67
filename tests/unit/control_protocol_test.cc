// The control protocol's wire format: every kind of bad request gets the
// error code docs/serve.md names, good ones parse, replies round-trip.
#include "serve/control_protocol.h"

#include <gtest/gtest.h>

#include <string>

namespace blkstack::serve {
namespace {

using nlohmann::json;

// The error code parsing `line` gives, or "" if it parses.
std::string CodeOf(std::string_view line) {
  ControlRequest req;
  auto err = parse_control_request(line, req);
  return err ? err->code() : "";
}

TEST(ControlProtocol, ParsesARequest) {
  ControlRequest req;
  ASSERT_FALSE(parse_control_request(
      R"({"id": 7, "verb": "get", "args": {"device": "ram0", "attribute": "size"}})",
      req));
  EXPECT_EQ(req.id, 7);
  EXPECT_EQ(req.verb, "get");
  EXPECT_EQ(req.args["device"], "ram0");
}

TEST(ControlProtocol, IdAndArgsAreOptional) {
  ControlRequest req;
  ASSERT_FALSE(parse_control_request(R"({"verb":"hello"})", req));
  EXPECT_TRUE(req.id.is_null());
  EXPECT_TRUE(req.args.is_object());
  EXPECT_TRUE(req.args.empty());
  ASSERT_FALSE(
      parse_control_request("{\"id\":\"a\",\"verb\":\"list\",\"args\":null}\r", req));
  EXPECT_EQ(req.id, "a");
}

TEST(ControlProtocol, MalformedJsonIsABadRequest) {
  EXPECT_EQ(CodeOf(""), "bad_request");
  EXPECT_EQ(CodeOf("{"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"verb":"hello"} trailing)"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"verb":"hello"}{"verb":"hello"})"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"verb":'hello'})"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"verb":"x","args":{"n":1e999}})"), "bad_request");  // overflow
  EXPECT_EQ(CodeOf(std::string("{\"verb\":\"he\0llo\"}", 17)), "bad_request");
}

TEST(ControlProtocol, NotAnObjectIsABadRequest) {
  EXPECT_EQ(CodeOf("[]"), "bad_request");
  EXPECT_EQ(CodeOf("\"hello\""), "bad_request");
  EXPECT_EQ(CodeOf("42"), "bad_request");
  EXPECT_EQ(CodeOf("null"), "bad_request");
}

TEST(ControlProtocol, VerbMustBeANonEmptyString) {
  EXPECT_EQ(CodeOf(R"({"id":1})"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"verb":1})"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"verb":""})"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"verb":["list"]})"), "bad_request");
  // The id still comes back, for the error reply.
  ControlRequest req;
  auto err = parse_control_request(R"({"id":"x","verb":null})", req);
  ASSERT_TRUE(err);
  EXPECT_EQ(req.id, "x");
}

TEST(ControlProtocol, ArgsMustBeAnObjectAndIdAScalar) {
  EXPECT_EQ(CodeOf(R"({"verb":"get","args":[1]})"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"verb":"get","args":"ram0"})"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"id":{"a":1},"verb":"get"})"), "bad_request");
  EXPECT_EQ(CodeOf(R"({"id":[1],"verb":"get"})"), "bad_request");
}

TEST(ControlProtocol, InvalidUtf8IsABadRequest) {
  EXPECT_EQ(CodeOf("{\"verb\":\"he\xffllo\"}"), "bad_request");
  EXPECT_EQ(CodeOf("{\"verb\":\"\xc3\"}"), "bad_request");          // truncated
  EXPECT_EQ(CodeOf("{\"verb\":\"\xc0\xaf\"}"), "bad_request");      // overlong
  EXPECT_EQ(CodeOf("{\"verb\":\"\xed\xa0\x80\"}"), "bad_request");  // surrogate
  EXPECT_EQ(CodeOf("{\"verb\":\"h\xc3\xa9llo\"}"), "");             // é is fine
}

TEST(ControlProtocol, DeepNestingIsRefusedBeforeParsing) {
  std::string deep = R"({"verb":"get","args":{"a":)";
  for (int i = 0; i < 10000; ++i) deep += '[';
  EXPECT_EQ(CodeOf(deep), "bad_request");
  // At the limit it parses; brackets inside strings do not count.
  std::string ok = R"({"verb":"get","args":{"a":)";
  for (int i = 0; i < kMaxControlDepth - 2; ++i) ok += '[';
  for (int i = 0; i < kMaxControlDepth - 2; ++i) ok += ']';
  ok += R"(,"s":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"[[["}})";
  EXPECT_EQ(CodeOf(ok), "");
}

TEST(ControlProtocol, LongLineIsTooLong) {
  std::string line = R"({"verb":"get","args":{"a":")";
  line.append(kMaxControlLine, 'x');
  line += "\"}}";
  EXPECT_EQ(CodeOf(line), "too_long");
}

TEST(ControlProtocol, RepliesRoundTrip) {
  const std::string ok = format_control_result(3, json{{"value", "[none] test"}});
  ASSERT_EQ(ok.back(), '\n');
  ControlReply r = parse_control_reply(ok);
  EXPECT_EQ(r.id, 3);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(r.result["value"], "[none] test");

  const std::string err =
      format_control_error("q", ControlError("not_found", "no device 'sdz'"));
  r = parse_control_reply(err);
  EXPECT_EQ(r.id, "q");
  ASSERT_TRUE(r.error);
  EXPECT_EQ(r.error->code(), "not_found");
  EXPECT_STREQ(r.error->what(), "no device 'sdz'");

  EXPECT_THROW(parse_control_reply("nonsense"), ControlError);
  EXPECT_THROW(parse_control_reply(R"({"id":1})"), ControlError);
}

TEST(ControlProtocol, MessagesWithBadBytesStillFormat) {
  const std::string err = format_control_error(
      nullptr, ControlError("failed", std::string("cannot open /tmp/\xff\xfe")));
  EXPECT_NO_THROW(parse_control_reply(err));
}

TEST(ControlProtocol, RequestsFormatForClients) {
  const std::string line = format_control_request(1, "set", {{"device", "ram0"}});
  ControlRequest req;
  ASSERT_FALSE(parse_control_request(line.substr(0, line.size() - 1), req));
  EXPECT_EQ(req.verb, "set");
  EXPECT_EQ(req.args["device"], "ram0");
}

}  // namespace
}  // namespace blkstack::serve
