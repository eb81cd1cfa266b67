// WaitPolicy: when an event loop blocks, spins or coalesces, fed with the
// rounds a client at a given depth would bring.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "export/nbd/wait_policy.h"

namespace blkstack::nbd {
namespace {

using Wait = WaitPolicy::Wait;
using std::chrono::microseconds;
constexpr Backlog kNone = Backlog::kNone;
constexpr Backlog kLastPart = Backlog::kLastPart;
constexpr Backlog kMore = Backlog::kMore;

WaitOptions small_probe_interval() {
  WaitOptions o;
  o.probe_interval = 4;
  return o;
}

// Rounds of `requests` each (with `backlog`) until the policy asks for a
// coalescing wait; returns how many waits that took (0: none within `max`).
int waits_until_coalesce(WaitPolicy& p, uint64_t requests, Backlog backlog,
                         int max = 10000) {
  for (int i = 1; i <= max; ++i) {
    const Wait w = p.next();
    p.round_done({requests, false, backlog});
    if (w == Wait::kCoalesce) return i;
  }
  return 0;
}

TEST(WaitPolicyTest, BlocksWhenIdleAndSpinsAtLowDepth) {
  WaitPolicy p;
  EXPECT_EQ(p.next(), Wait::kBlock);  // nothing has happened yet
  p.round_done({1});
  EXPECT_EQ(p.next(), Wait::kSpin);  // one request: its successor is close
  p.round_done({2});
  EXPECT_EQ(p.next(), Wait::kSpin);
  p.round_done({3});
  EXPECT_EQ(p.next(), Wait::kBlock);  // a batch: no spinning
  p.round_done({0});
  EXPECT_EQ(p.next(), Wait::kBlock);  // idle
  p.round_done({0, /*payload=*/true});
  EXPECT_EQ(p.next(), Wait::kSpin);  // a large write: more of it is coming
  EXPECT_FALSE(p.coalescing());
}

TEST(WaitPolicyTest, ProbesOnlyAfterRoundsWithRequests) {
  WaitPolicy p(small_probe_interval());
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(p.next(), Wait::kBlock);
    p.round_done({0});
  }
  EXPECT_EQ(waits_until_coalesce(p, 1, kNone), 5);  // the idle rounds did not count
}

TEST(WaitPolicyTest, ClientWithBacklogAtDepthIsCoalesced) {
  WaitPolicy p(small_probe_interval());
  EXPECT_EQ(waits_until_coalesce(p, 16, kMore), 5);
  EXPECT_TRUE(p.coalescing());
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(p.next(), Wait::kCoalesce);
    p.round_done({i % 2 ? 16u : 2u, false, kLastPart});  // stay_at is enough
  }
}

TEST(WaitPolicyTest, ProbeFailsWithoutBacklogOrDepth) {
  {
    WaitPolicy p(small_probe_interval());
    waits_until_coalesce(p, 16, kNone);  // the client read everything
    EXPECT_FALSE(p.coalescing());
  }
  {
    WaitPolicy p(small_probe_interval());
    waits_until_coalesce(p, 3, kMore);  // below enter_at
    EXPECT_FALSE(p.coalescing());
  }
}

TEST(WaitPolicyTest, FailedProbesBackOffExponentially) {
  WaitPolicy p(small_probe_interval());
  // The first probe comes after 4 rounds, fails; then 8, 16, ... rounds
  // (plus the probe's own wait), up to the cap.
  EXPECT_EQ(waits_until_coalesce(p, 1, kNone), 5);
  int expect = 8;
  for (int i = 0; i < 14; ++i) {
    EXPECT_EQ(waits_until_coalesce(p, 1, kNone), expect) << "probe " << i;
    expect = std::min<int>(expect * 2, WaitPolicy::kMaxProbeInterval);
  }
}

TEST(WaitPolicyTest, LeavesAfterTwoShortRoundsInARow) {
  WaitPolicy p(small_probe_interval());
  waits_until_coalesce(p, 16, kMore);
  ASSERT_TRUE(p.coalescing());
  p.next();
  p.round_done({16, false, kNone});  // one client had read everything: one strike
  EXPECT_TRUE(p.coalescing());
  p.next();
  p.round_done({16, false, kLastPart});  // strikes must be in a row
  p.next();
  p.round_done({1, false, kMore});  // fewer than stay_at
  EXPECT_TRUE(p.coalescing());
  p.next();
  p.round_done({0, false, kNone});  // the client went idle
  EXPECT_FALSE(p.coalescing());
  EXPECT_EQ(p.next(), Wait::kBlock);
}

TEST(WaitPolicyTest, ShortStintDoublesTheProbeIntervalLongOneResetsIt) {
  WaitPolicy p(small_probe_interval());
  waits_until_coalesce(p, 16, kMore);
  for (int i = 0; i < 2; ++i) {  // over at once: depth at the edge
    p.next();
    p.round_done({16, false, kNone});
  }
  ASSERT_FALSE(p.coalescing());
  EXPECT_EQ(waits_until_coalesce(p, 16, kMore), 8);  // the 8th round with requests
  ASSERT_TRUE(p.coalescing());
  for (uint32_t i = 0; i < WaitPolicy::kSettledRounds; ++i) {
    p.next();
    p.round_done({16, false, kLastPart});
  }
  for (int i = 0; i < 2; ++i) {
    p.next();
    p.round_done({0, false, kNone});
  }
  ASSERT_FALSE(p.coalescing());
  EXPECT_EQ(waits_until_coalesce(p, 16, kMore), 5);  // back to the first interval
}

TEST(WaitPolicyTest, SleepLengthensWhileTheClientHasMoreThanTheLastPartUnread) {
  WaitPolicy p(small_probe_interval());
  EXPECT_EQ(p.interval(), microseconds(20));  // before any client
  waits_until_coalesce(p, 16, kLastPart);
  ASSERT_TRUE(p.coalescing());
  EXPECT_EQ(p.interval(), microseconds(20));  // kLastPart: where it should be
  std::vector<int64_t> seen;
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(p.next(), Wait::kCoalesce);
    p.round_done({16, false, kMore});
    seen.push_back(p.interval().count());
  }
  // By an eighth each round (at least 1 µs), then held at the longest.
  EXPECT_EQ(seen[0], 22);
  EXPECT_EQ(seen[1], 24);
  EXPECT_EQ(seen[2], 27);
  EXPECT_EQ(seen.back(), 100);
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  p.next();
  p.round_done({16, false, kLastPart});
  EXPECT_EQ(p.interval(), microseconds(100));
}

TEST(WaitPolicyTest, SleepShortensWhenTheClientRanDry) {
  WaitOptions o = small_probe_interval();
  o.min_coalesce = microseconds(8);
  WaitPolicy p(o);
  waits_until_coalesce(p, 16, kMore);
  ASSERT_TRUE(p.coalescing());
  EXPECT_EQ(p.interval(), microseconds(20));  // a probe's round does not adapt
  const int64_t expect[] = {15, 11, 8, 8, 8};
  for (int64_t e : expect) {
    p.next();
    p.round_done({16, false, kNone});
    EXPECT_EQ(p.interval().count(), e);
    if (!p.coalescing()) waits_until_coalesce(p, 16, kLastPart);  // two strikes: back in
  }
}

TEST(WaitPolicyTest, FailedProbesAndUnmeasuredRoundsKeepTheSleep) {
  WaitPolicy p(small_probe_interval());
  for (int i = 0; i < 5; ++i) waits_until_coalesce(p, 16, kNone);  // a client at the edge
  EXPECT_FALSE(p.coalescing());
  EXPECT_EQ(p.interval(), microseconds(20));
  waits_until_coalesce(p, 16, kLastPart, 100000);
  ASSERT_TRUE(p.coalescing());
  p.next();
  p.round_done({16, false, std::nullopt});  // no replies went out: nothing known
  EXPECT_EQ(p.interval(), microseconds(20));
  EXPECT_TRUE(p.coalescing());
}

TEST(WaitPolicyTest, FewRequestsWithMuchUnreadDoNotLengthenTheSleep) {
  // A slow reader of large replies: one request per round, far behind.
  WaitPolicy p(small_probe_interval());
  waits_until_coalesce(p, 16, kLastPart);
  for (int i = 0; i < 10; ++i) {
    p.next();
    p.round_done({1, false, kMore});
    p.next();
    p.round_done({16, false, kLastPart});  // keeps it coalescing
  }
  EXPECT_EQ(p.interval(), microseconds(20));
}

TEST(WaitPolicyTest, TheSleepNeverExceedsTheLongest) {
  WaitOptions o;
  o.coalesce = microseconds(10);
  EXPECT_EQ(WaitPolicy(o).interval(), microseconds(10));
  o.coalesce = microseconds(2);  // below min_coalesce: still the longest
  WaitPolicy p(o);
  EXPECT_EQ(p.interval(), microseconds(2));
  waits_until_coalesce(p, 16, kLastPart);
  ASSERT_TRUE(p.coalescing());
  p.next();
  p.round_done({16, false, kMore});
  EXPECT_EQ(p.interval(), microseconds(2));
}

TEST(WaitPolicyTest, ZeroIntervalNeverCoalesces) {
  WaitOptions o = small_probe_interval();
  o.coalesce = std::chrono::microseconds(0);
  WaitPolicy p(o);
  EXPECT_EQ(waits_until_coalesce(p, 64, kMore), 0);
  EXPECT_FALSE(p.coalescing());
}

}  // namespace
}  // namespace blkstack::nbd
