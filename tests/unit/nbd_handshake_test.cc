// The NBD handshake as a state machine over bytes: every option, and every
// malformed input we know of, without a socket.
#include <gtest/gtest.h>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "export/export_table.h"
#include "export/nbd/handshake.h"
#include "nbd_test_util.h"

namespace blkstack::nbd {
namespace {

using namespace testing;

class HandshakeTest : public ::testing::Test {
 protected:
  HandshakeTest() {
    auto disk = registry_.create("ram:8M,name=hs0");
    auto ro = registry_.create("ram:4M,name=hs1,ro=1,bs=4096");
    exports_ = std::make_shared<const ExportTable>(
        std::vector<Export>{{"disk", "the scratch disk", disk}, {"golden", "", ro}});
    hs_ = std::make_unique<Handshake>(exports_);
    greeting_ = hs_->output();
    hs_->output().clear();
  }

  // Feeds bytes; returns how many the handshake took.
  size_t feed(std::string_view bytes) {
    return hs_->feed({reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()});
  }
  void start(uint32_t flags = kClientFixedNewstyle | kClientNoZeroes) {
    std::string s;
    put32(s, flags);
    EXPECT_EQ(feed(s), 4u);
  }
  // The option replies produced since the last call.
  std::vector<OptReply> replies() {
    size_t pos = 0;
    auto r = parse_replies(hs_->output(), &pos);
    EXPECT_EQ(pos, hs_->output().size()) << "trailing bytes after option replies";
    hs_->output().clear();
    return r;
  }

  DiskRegistry registry_;
  std::shared_ptr<const ExportTable> exports_;
  std::unique_ptr<Handshake> hs_;
  std::string greeting_;
};

TEST_F(HandshakeTest, GreetingIsNewstyleFixedWithNoZeroes) {
  ASSERT_EQ(greeting_.size(), 18u);
  EXPECT_EQ(load64(greeting_.data()), kNbdMagic);
  EXPECT_EQ(load64(greeting_.data() + 8), kIHaveOpt);
  EXPECT_EQ(load16(greeting_.data() + 16), kFlagFixedNewstyle | kFlagNoZeroes);
}

TEST_F(HandshakeTest, UnknownClientFlagsClose) {
  start(1u << 7);
  EXPECT_TRUE(hs_->closed());
  EXPECT_NE(hs_->close_reason().find("client flags"), std::string::npos);
}

TEST_F(HandshakeTest, BadOptionMagicCloses) {
  start();
  std::string s = option(kOptList);
  s[0] = 'X';
  feed(s);
  EXPECT_TRUE(hs_->closed());
}

TEST_F(HandshakeTest, ListNamesEveryExport) {
  start();
  feed(option(kOptList));
  auto r = replies();
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].type, kRepServer);
  EXPECT_EQ(r[0].data.substr(4, load32(r[0].data.data())), "disk");
  EXPECT_EQ(r[1].data.substr(4, load32(r[1].data.data())), "golden");
  EXPECT_EQ(r[2].type, kRepAck);
  EXPECT_EQ(r[2].option, kOptList);
}

TEST_F(HandshakeTest, ListWithPayloadIsInvalid) {
  start();
  feed(option(kOptList, "x"));
  auto r = replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_FALSE(hs_->closed());
}

TEST_F(HandshakeTest, UnknownOptionsAreUnsupportedAndNegotiationGoesOn) {
  start();
  feed(option(42, "abc") + option(kOptExtendedHeaders) + option(kOptPeekExport));
  auto r = replies();
  ASSERT_EQ(r.size(), 3u);
  for (const auto& x : r) EXPECT_EQ(x.type, kRepErrUnsup);
  EXPECT_EQ(r[0].option, 42u);
  feed(option(kOptList));
  EXPECT_EQ(replies().back().type, kRepAck);
}

TEST_F(HandshakeTest, StartTlsIsRefusedByPolicy) {
  start();
  feed(option(kOptStartTls));
  auto r = replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrPolicy);
  EXPECT_FALSE(hs_->closed());
}

TEST_F(HandshakeTest, InfoGivesSizeFlagsAndBlockSizes) {
  start();
  feed(option(kOptInfo,
              info_payload("golden", {kInfoBlockSize, kInfoName, kInfoDescription})));
  auto r = replies();
  ASSERT_GE(r.size(), 3u);
  bool saw_export = false, saw_bs = false, saw_name = false;
  for (const auto& x : r) {
    if (x.type != kRepInfo) continue;
    switch (load16(x.data.data())) {
      case kInfoExport:
        saw_export = true;
        EXPECT_EQ(load64(x.data.data() + 2), 4u << 20);
        EXPECT_TRUE(load16(x.data.data() + 10) & kFlagReadOnly);
        // Nothing that writes is advertised on a read-only export.
        EXPECT_FALSE(load16(x.data.data() + 10) & (kFlagSendTrim | kFlagSendWriteZeroes |
                                                   kFlagSendFua | kFlagSendFastZero));
        EXPECT_TRUE(load16(x.data.data() + 10) & kFlagHasFlags);
        break;
      case kInfoBlockSize:
        saw_bs = true;
        EXPECT_EQ(load32(x.data.data() + 2), 4096u);       // minimum: logical block size
        EXPECT_EQ(load32(x.data.data() + 6), 4096u);       // preferred
        EXPECT_EQ(load32(x.data.data() + 10), 32u << 20);  // maximum
        break;
      case kInfoName:
        saw_name = true;
        EXPECT_EQ(x.data.substr(2), "golden");
        break;
    }
  }
  EXPECT_TRUE(saw_export && saw_bs && saw_name);
  EXPECT_EQ(r.back().type, kRepAck);
  EXPECT_FALSE(hs_->done());  // INFO does not end negotiation
}

TEST_F(HandshakeTest, EmptyNameSelectsTheFirstExport) {
  start();
  feed(option(kOptGo, info_payload("")));
  ASSERT_TRUE(hs_->done());
  EXPECT_EQ(hs_->result().export_name, "disk");
}

TEST_F(HandshakeTest, InfoAndGoOnUnknownExportAreRefused) {
  start();
  feed(option(kOptInfo, info_payload("nope")) + option(kOptGo, info_payload("nope")));
  auto r = replies();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].type, kRepErrUnknown);
  EXPECT_EQ(r[1].type, kRepErrUnknown);
  EXPECT_FALSE(hs_->done());
  EXPECT_FALSE(hs_->closed());
}

TEST_F(HandshakeTest, MalformedGoPayloadsAreInvalid) {
  start();
  std::string lying = info_payload("disk", {kInfoBlockSize});
  lying.pop_back();  // count says 1 request, 1 byte left
  std::string long_name;
  put32(long_name, 1000);  // name length past the payload
  long_name += "disk";
  feed(option(kOptGo, lying) + option(kOptGo, long_name) + option(kOptGo, "ab"));
  auto r = replies();
  ASSERT_EQ(r.size(), 3u);
  for (const auto& x : r) EXPECT_EQ(x.type, kRepErrInvalid);
  EXPECT_FALSE(hs_->done());
}

TEST_F(HandshakeTest, GoEndsNegotiationAndLeavesTheRestUnconsumed) {
  start();
  const std::string go = option(kOptGo, info_payload("disk", {kInfoBlockSize}));
  const std::string next = request(kCmdRead, 1, 0, 512);
  EXPECT_EQ(feed(go + next), go.size());
  ASSERT_TRUE(hs_->done());
  const Negotiated& n = hs_->result();
  EXPECT_EQ(n.export_name, "disk");
  EXPECT_TRUE(n.block_size_agreed);
  EXPECT_FALSE(n.structured_replies);
  EXPECT_FALSE(n.transmission_flags & kFlagSendDf);  // DF needs structured replies
  EXPECT_TRUE(n.transmission_flags & kFlagSendTrim);
  EXPECT_TRUE(n.transmission_flags & kFlagCanMultiConn);
  EXPECT_FALSE(n.transmission_flags & kFlagReadOnly);
  EXPECT_FALSE(n.transmission_flags & kFlagRotational);
}

TEST_F(HandshakeTest, ExportNameWithAndWithoutZeroes) {
  start(kClientFixedNewstyle);
  feed(option(kOptExportName, "disk"));
  ASSERT_TRUE(hs_->done());
  EXPECT_EQ(hs_->output().size(), 8u + 2 + 124);
  EXPECT_EQ(load64(hs_->output().data()), 8u << 20);

  Handshake h2(exports_);
  h2.output().clear();
  std::string s;
  put32(s, kClientFixedNewstyle | kClientNoZeroes);
  s += option(kOptExportName, "golden");
  h2.feed({reinterpret_cast<const std::byte*>(s.data()), s.size()});
  ASSERT_TRUE(h2.done());
  EXPECT_EQ(h2.output().size(), 10u);
}

TEST_F(HandshakeTest, ExportNameForUnknownExportCloses) {
  start();
  feed(option(kOptExportName, "nope"));
  EXPECT_TRUE(hs_->closed());
}

TEST_F(HandshakeTest, OversizedOptionIsRefusedWithoutReadingItsPayload) {
  start();
  // A header that declares 2 GiB of payload: the handshake must answer
  // TOO_BIG and close at once, taking no byte past the header, instead of
  // consuming whatever the client sends for as long as it sends.
  std::string h;
  put64(h, kIHaveOpt);
  put32(h, kOptGo);
  put32(h, 1u << 31);
  const std::string payload(64 << 10, 'x');
  EXPECT_EQ(feed(h + payload), h.size());
  EXPECT_TRUE(hs_->closed());
  auto r = replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrTooBig);
  EXPECT_EQ(feed(payload), 0u);
}

TEST_F(HandshakeTest, OversizedExportNameClosesWithoutAnOptionReply) {
  start();
  // NBD_OPT_EXPORT_NAME has no error reply: the client reads the export's
  // size and flags next, so an option reply would be taken for them.
  std::string h;
  put64(h, kIHaveOpt);
  put32(h, kOptExportName);
  put32(h, 1u << 20);
  EXPECT_EQ(feed(h), h.size());
  EXPECT_TRUE(hs_->closed());
  EXPECT_TRUE(hs_->output().empty());
}

TEST_F(HandshakeTest, OptionAtTheLengthLimitIsStillRead) {
  start();
  // kMaxOptionLength itself is buffered and answered (here: malformed GO).
  feed(option(kOptGo, std::string(kMaxOptionLength, '\0')));
  EXPECT_FALSE(hs_->closed());
  auto r = replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  feed(option(kOptList));
  EXPECT_EQ(replies().back().type, kRepAck);  // still in sync
}

TEST_F(HandshakeTest, StructuredReplyTakesNoPayload) {
  start();
  feed(option(kOptStructuredReply, "x") + option(kOptStructuredReply));
  auto r = replies();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_EQ(r[1].type, kRepAck);
}

TEST_F(HandshakeTest, SetMetaContextNeedsStructuredReplies) {
  start();
  feed(option(kOptSetMetaContext, meta_payload("disk", {kBaseAllocation})));
  auto r = replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
}

TEST_F(HandshakeTest, BaseAllocationIsSelectedAndCarriedToGo) {
  start();
  feed(option(kOptStructuredReply));
  feed(option(kOptSetMetaContext,
              meta_payload("disk", {"qemu:dirty-bitmap:x", kBaseAllocation})));
  auto r = replies();
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[1].type, kRepMetaContext);
  EXPECT_EQ(load32(r[1].data.data()), kBaseAllocationId);
  EXPECT_EQ(r[1].data.substr(4), kBaseAllocation);
  EXPECT_EQ(r[2].type, kRepAck);
  feed(option(kOptGo, info_payload("disk")));
  ASSERT_TRUE(hs_->done());
  EXPECT_TRUE(hs_->result().base_allocation);
  EXPECT_TRUE(hs_->result().structured_replies);
  EXPECT_TRUE(hs_->result().transmission_flags & kFlagSendDf);
}

TEST_F(HandshakeTest, MetaContextForAnotherExportIsNotCarried) {
  start();
  feed(option(kOptStructuredReply));
  feed(option(kOptSetMetaContext, meta_payload("golden", {kBaseAllocation})));
  feed(option(kOptGo, info_payload("disk")));
  ASSERT_TRUE(hs_->done());
  EXPECT_FALSE(hs_->result().base_allocation);
}

TEST_F(HandshakeTest, ListMetaContext) {
  start();
  feed(option(kOptListMetaContext, meta_payload("disk", {})));
  auto r = replies();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].type, kRepMetaContext);
  EXPECT_EQ(r[0].data.substr(4), kBaseAllocation);
  feed(option(kOptListMetaContext, meta_payload("disk", {"other:"})));
  r = replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  feed(option(kOptListMetaContext, meta_payload("nope", {})));
  EXPECT_EQ(replies()[0].type, kRepErrUnknown);
  std::string bad = meta_payload("disk", {"base:"});
  bad += "junk";
  feed(option(kOptListMetaContext, bad));
  EXPECT_EQ(replies()[0].type, kRepErrInvalid);
}

TEST_F(HandshakeTest, AbortIsAcknowledgedThenCloses) {
  start();
  feed(option(kOptAbort));
  auto r = replies();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_TRUE(hs_->closed());
}

TEST_F(HandshakeTest, ByteAtATimeGivesTheSameConversation) {
  std::string all;
  put32(all, kClientFixedNewstyle | kClientNoZeroes);
  all += option(kOptList) + option(99, "zz") + option(kOptStructuredReply) +
         option(kOptGo, info_payload("disk", {kInfoBlockSize}));
  Handshake whole(exports_);
  whole.feed({reinterpret_cast<const std::byte*>(all.data()), all.size()});
  Handshake bytes(exports_);
  for (char c : all) {
    const std::byte b{static_cast<unsigned char>(c)};
    EXPECT_EQ(bytes.feed({&b, 1}), 1u);
  }
  ASSERT_TRUE(whole.done());
  ASSERT_TRUE(bytes.done());
  EXPECT_EQ(whole.output(), bytes.output());
}

}  // namespace
}  // namespace blkstack::nbd
