// Mempool<T> and BioSet: the reserve, no-wait failure, waiting, FIFO hand-off
// of freed elements, forward progress under contention, and the debug check
// for seed 004's deadlock (waiting on a pool while owning one of its elements).
#include "blkstack/mempool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "blkstack/bio.h"
#include "blkstack/bioset.h"
#include "blkstack/completion.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/submit.h"

namespace blkstack {
namespace {

using namespace std::chrono_literals;

// Aborts the run if it is still alive after `limit`: a deadlock must fail the
// test, not hang until ctest's timeout with no hint of what stuck. The work
// stays on the calling thread, because the ownership check is per thread.
class Watchdog {
 public:
  Watchdog(std::chrono::seconds limit, const char* what)
      : thread_([this, limit, what] {
          std::unique_lock lock(mu_);
          if (!cv_.wait_for(lock, limit, [&] { return done_; })) {
            std::fprintf(stderr, "%s: still running after %llds, assuming a deadlock\n",
                         what, static_cast<long long>(limit.count()));
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Polls `cond` until it holds; fails (and returns false) after 10 s.
template <class Cond>
bool WaitUntil(Cond&& cond) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "condition not reached within 10 s";
      return false;
    }
    std::this_thread::sleep_for(100us);
  }
  return true;
}

// Counts live objects, to show that the pool constructs and destroys
// elements exactly when they are allocated and freed.
struct Tracked {
  static inline std::atomic<int> live{0};
  explicit Tracked(int v) : value(v) { ++live; }
  ~Tracked() { --live; }
  int value;
};

struct alignas(64) Aligned {
  char bytes[100];
};

TEST(Mempool, ReserveIsPreallocatedAndUsedBeforeTheHeap) {
  Mempool<Tracked> pool("reserve", 4);
  EXPECT_EQ(pool.base().name(), "reserve");
  EXPECT_EQ(pool.base().min_nr(), 4u);
  EXPECT_EQ(pool.base().max_nr(), 0u);
  EXPECT_EQ(pool.base().total(), 4u);
  EXPECT_EQ(pool.base().available(), 4u);
  EXPECT_EQ(pool.base().waiters(), 0u);
  EXPECT_EQ(Tracked::live, 0) << "the reserve is storage, not constructed objects";

  std::set<Tracked*> got;
  for (int i = 0; i < 4; ++i) {
    Tracked* t = pool.alloc(Wait::kNoWait, i);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->value, i);
    got.insert(t);
  }
  EXPECT_EQ(got.size(), 4u);
  EXPECT_EQ(pool.base().total(), 4u)
      << "the reserve must serve the first min_nr allocations";
  EXPECT_EQ(pool.base().available(), 0u);
  EXPECT_EQ(Tracked::live, 4);

  // Uncapped: beyond the reserve it grows, even without waiting.
  Tracked* extra = pool.alloc(Wait::kNoWait, 99);
  ASSERT_NE(extra, nullptr);
  EXPECT_EQ(pool.base().total(), 5u);
  got.insert(extra);

  for (Tracked* t : got) pool.free(t);
  EXPECT_EQ(Tracked::live, 0);
  // It keeps what it grew, so a warm pool does not touch the heap again.
  EXPECT_EQ(pool.base().available(), 5u);
  EXPECT_EQ(pool.base().total(), 5u);
}

TEST(Mempool, ElementsHonourTheirAlignment) {
  Mempool<Aligned> pool("aligned", 3);
  std::vector<Aligned*> got;
  for (int i = 0; i < 6; ++i) {  // reserve and heap-grown elements alike
    Aligned* a = pool.alloc(Wait::kNoWait);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % alignof(Aligned), 0u);
    std::fill(std::begin(a->bytes), std::end(a->bytes), static_cast<char>(i));
    got.push_back(a);
  }
  for (int i = 0; i < 6; ++i) EXPECT_EQ(got[i]->bytes[99], static_cast<char>(i));
  for (Aligned* a : got) pool.free(a);
}

TEST(Mempool, CapBelowReserveIsRaisedToTheReserve) {
  Mempool<int> pool("raised", 4, 2);
  EXPECT_EQ(pool.base().max_nr(), 4u);
}

TEST(Mempool, NoWaitFailsWhenACappedPoolIsExhausted) {
  Mempool<int> pool("capped", 1, 2);
  int* a = pool.alloc(Wait::kNoWait, 1);
  int* b = pool.alloc(Wait::kNoWait, 2);  // grows to the cap
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(pool.base().total(), 2u);
  EXPECT_EQ(pool.alloc(Wait::kNoWait), nullptr);
  EXPECT_EQ(pool.base().total(), 2u) << "the cap must hold";
  EXPECT_EQ(pool.base().waiters(), 0u) << "no-wait must not queue";

  pool.free(a);
  EXPECT_EQ(pool.base().available(), 1u);
  int* again = pool.alloc(Wait::kNoWait, 3);
  EXPECT_EQ(again, a) << "the freed element is the only one left";
  pool.free(again);
  pool.free(b);
  EXPECT_EQ(pool.base().available(), 2u);
}

TEST(Mempool, MayWaitBlocksUntilAnotherThreadFrees) {
  Mempool<int> pool("blocking", 1, 1);
  int* held = pool.alloc(Wait::kNoWait, 7);
  ASSERT_NE(held, nullptr);

  std::atomic<int*> got{nullptr};
  std::thread waiter([&] { got = pool.alloc(Wait::kMayWait, 8); });
  ASSERT_TRUE(WaitUntil([&] { return pool.base().waiters() == 1; }));
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(got.load(), nullptr) << "alloc(kMayWait) returned from an exhausted pool";

  pool.free(held);
  waiter.join();
  // The freed element went straight to the waiter, not via the free list.
  EXPECT_EQ(got.load(), held);
  EXPECT_EQ(*got.load(), 8);
  EXPECT_EQ(pool.base().available(), 0u);
  EXPECT_EQ(pool.base().waiters(), 0u);
  pool.free(got.load());
  EXPECT_EQ(pool.base().available(), 1u);
}

TEST(Mempool, FreedElementsGoToWaitersBeforeTheFreeList) {
  Mempool<int> pool("handoff", 2, 2);
  int* a = pool.alloc(Wait::kNoWait);
  int* b = pool.alloc(Wait::kNoWait);
  std::atomic<int*> got{nullptr};
  std::thread waiter([&] { got = pool.alloc(Wait::kMayWait); });
  ASSERT_TRUE(WaitUntil([&] { return pool.base().waiters() == 1; }));

  pool.free(a);  // goes to the waiter...
  EXPECT_EQ(pool.base().available(), 0u);
  EXPECT_EQ(pool.base().waiters(), 0u);
  pool.free(b);  // ...and only then does the free list refill
  EXPECT_EQ(pool.base().available(), 1u);
  waiter.join();
  EXPECT_EQ(got.load(), a);
  pool.free(got.load());
  EXPECT_EQ(pool.base().available(), 2u);
}

TEST(Mempool, WaitersAreServedInFifoOrder) {
  constexpr int kWaiters = 6;
  Mempool<int> pool("fifo", kWaiters, kWaiters);
  std::vector<int*> held;
  for (int i = 0; i < kWaiters; ++i) held.push_back(pool.alloc(Wait::kNoWait, -1));

  std::mutex mu;
  std::vector<int> order;
  std::vector<int*> got(kWaiters, nullptr);
  std::vector<std::thread> threads;
  // One at a time, each queued before the next starts, so the queue order
  // is known: waiter i is the i-th in line.
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      int* p = pool.alloc(Wait::kMayWait, i);
      std::lock_guard lock(mu);
      order.push_back(i);
      got[i] = p;
    });
    ASSERT_TRUE(WaitUntil([&] { return pool.base().waiters() == size_t(i) + 1; }));
  }
  // Free one at a time and check who woke.
  for (int i = 0; i < kWaiters; ++i) {
    pool.free(held[i]);
    ASSERT_TRUE(WaitUntil([&] {
      std::lock_guard lock(mu);
      return order.size() == size_t(i) + 1;
    }));
    std::lock_guard lock(mu);
    EXPECT_EQ(order[i], i) << "waiter " << order[i] << " woke in place of waiter " << i;
    EXPECT_EQ(got[i], held[i]);
    EXPECT_EQ(*got[i], i);
    EXPECT_EQ(pool.base().waiters(), size_t(kWaiters - i - 1));
    EXPECT_EQ(pool.base().available(), 0u);
  }
  for (auto& t : threads) t.join();
  for (int* p : got) pool.free(p);
  EXPECT_EQ(pool.base().available(), size_t(kWaiters));
}

// Eight threads share two elements, each holding at most one at a time (the
// rule): every allocation must eventually succeed and no element may be
// handed to two threads at once.
TEST(Mempool, ForwardProgressWithATinyReserve) {
  constexpr int kThreads = 8;
  constexpr int kCycles = 100'000;
  struct Elem {
    std::atomic<int> owner{-1};
  };
  Mempool<Elem> pool("tiny", 2, 2);
  std::atomic<int> doubly_owned{0};
  std::atomic<int> finished{0};
  {
    Watchdog watchdog(60s, "ForwardProgressWithATinyReserve");
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kCycles; ++i) {
          Elem* e = pool.alloc(Wait::kMayWait);
          int expected = -1;
          if (!e->owner.compare_exchange_strong(expected, t)) ++doubly_owned;
          e->owner = -1;
          pool.free(e);
        }
        ++finished;
      });
    }
    for (auto& th : threads) th.join();
  }
  EXPECT_EQ(finished, kThreads);
  EXPECT_EQ(doubly_owned, 0);
  EXPECT_EQ(pool.base().total(), 2u);
  EXPECT_EQ(pool.base().available(), 2u);
  EXPECT_EQ(pool.base().waiters(), 0u);
}

// --- BioSet ------------------------------------------------------------------

TEST(BioSet, AllocReturnsAResetBioOfThisSet) {
  BioSet set("bs-reset", 2, 2);
  Bio* bio = set.alloc();
  ASSERT_NE(bio, nullptr);
  EXPECT_EQ(bio->pool(), &set);
  EXPECT_EQ(bio->refcount(), 1u);
  EXPECT_EQ(bio->disk(), nullptr);
  EXPECT_EQ(bio->size(), 0u);
  EXPECT_EQ(bio->status(), Status::kOk);
  EXPECT_FALSE(bio->completed());
  EXPECT_EQ(BioSet::inline_segments(*bio).size(), BioSet::kInlineSegments);

  // Dirty it, return it, and get it back: it must come back clean.
  bio->set_status(Status::kIoError);
  bio->set_flags(BioFlag::kFua);
  bio->put();
  Bio* again = set.alloc();
  EXPECT_EQ(again, bio);
  EXPECT_EQ(again->status(), Status::kOk);
  EXPECT_FALSE(again->has_flag(BioFlag::kFua));
  again->put();
}

TEST(BioSet, PutOfTheLastReferenceReturnsTheBioToThePool) {
  BioSet set("bs-roundtrip", 2, 2);
  EXPECT_EQ(set.mempool().available(), 2u);
  Bio* a = set.alloc(Wait::kNoWait);
  Bio* b = set.alloc(Wait::kNoWait);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(set.alloc(Wait::kNoWait), nullptr);
  EXPECT_EQ(set.mempool().available(), 0u);

  b->get();
  b->put();
  EXPECT_EQ(set.mempool().available(), 0u) << "a bio with a reference left was freed";
  b->put();
  EXPECT_EQ(set.mempool().available(), 1u);
  a->put();
  EXPECT_EQ(set.mempool().available(), 2u);
  EXPECT_EQ(set.mempool().total(), 2u);
}

void PutOnCompletion(Bio& bio) {
  auto* count = static_cast<std::atomic<int>*>(bio.context());
  // Count first: the put may hand the bio to a waiter that checks the count.
  count->fetch_add(1);
  bio.put();
}

// The rule as block code follows it: allocate, submit (which disowns), then
// allocate the next from the same pool. With a reserve of two and a null
// disk completing on another thread, every thread must get through.
TEST(BioSet, SubmitThenAllocateMakesProgressWithATinySet) {
  DiskRegistry registry;
  auto disk = registry.create("null:size=16M,completion=deferred");
  BioSet set("bs-progress", 2, 2);
  constexpr int kThreads = 4;
  constexpr int kBios = 20'000;
  std::atomic<int> completed{0};
  {
    Watchdog watchdog(60s, "SubmitThenAllocateMakesProgressWithATinySet");
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kBios; ++i) {
          Bio* bio = set.alloc(Wait::kMayWait);
          bio->init_nodata(disk.get(), Op::kDiscard, uint64_t(t) * 8, 4096,
                           PutOnCompletion, &completed);
          submit_bio(*bio);
        }
      });
    }
    for (auto& th : threads) th.join();
    while (completed.load() != kThreads * kBios) std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(completed, kThreads * kBios);
  EXPECT_EQ(set.mempool().available(), 2u);
  EXPECT_EQ(set.mempool().total(), 2u);
  EXPECT_EQ(disk->stats().ios[kStatDiscard], uint64_t(kThreads) * kBios);
}

// submit_bio() hands the bio's ownership to the I/O, so the submitter may
// wait on the same exhausted set: the bio comes back when it completes.
TEST(BioSet, WaitingAfterSubmittingTheOnlyBioIsAllowed) {
  DiskRegistry registry;
  auto disk = registry.create("null:size=16M,completion=timer,latency_ns=20ms");
  BioSet set("bs-single", 1, 1);
  std::atomic<int> completed{0};
  Bio* first = set.alloc(Wait::kNoWait);
  ASSERT_NE(first, nullptr);
  first->init_nodata(disk.get(), Op::kDiscard, 0, 4096, PutOnCompletion, &completed);
  const auto start = std::chrono::steady_clock::now();
  submit_bio(*first);
  Bio* second = nullptr;
  {
    Watchdog watchdog(10s, "WaitingAfterSubmittingTheOnlyBioIsAllowed");
    second = set.alloc(Wait::kMayWait);
  }
  EXPECT_GE(std::chrono::steady_clock::now() - start, 20ms)
      << "alloc returned before the only bio completed";
  EXPECT_EQ(second, first);
  EXPECT_EQ(completed, 1);
  second->put();
}

// --- the seed 004 check ---------------------------------------------------

// Owning elements of *other* pools while waiting is the allowed pattern
// (one pool per layer); it must not trip the check.
TEST(Mempool, WaitingWhileOwningAnElementOfAnotherPoolIsAllowed) {
  Mempool<int> upper("upper", 1, 1);
  Mempool<int> lower("lower", 1, 1);
  int* mine = upper.alloc(Wait::kNoWait);
  ASSERT_NE(mine, nullptr);
  std::atomic<int*> theirs{nullptr};
  std::thread freer([&] {  // another thread owns lower's only element
    theirs = lower.alloc(Wait::kNoWait);
    std::this_thread::sleep_for(20ms);
    lower.free(theirs);
  });
  EXPECT_TRUE(WaitUntil([&] { return theirs.load() != nullptr; }));
  int* got = nullptr;
  {
    Watchdog watchdog(10s, "WaitingWhileOwningAnElementOfAnotherPoolIsAllowed");
    got = lower.alloc(Wait::kMayWait);
  }
  freer.join();
  EXPECT_EQ(got, theirs);
  lower.free(got);
  upper.free(mine);
}

// An element disown()ed (handed to an I/O that will free it) no longer
// counts as owned: waiting for the pool is then legitimate.
TEST(Mempool, WaitingAfterDisowningIsAllowed) {
  Mempool<int> pool("disowned", 1, 1);
  int* p = pool.alloc(Wait::kNoWait, 1);
  ASSERT_NE(p, nullptr);
  pool.disown(p);
  std::thread io([&] {  // plays the completion that frees it
    std::this_thread::sleep_for(20ms);
    pool.free(p);
  });
  int* q = nullptr;
  {
    Watchdog watchdog(10s, "WaitingAfterDisowningIsAllowed");
    q = pool.alloc(Wait::kMayWait, 2);
  }
  io.join();
  EXPECT_EQ(q, p);
  EXPECT_EQ(*q, 2);
  pool.free(q);
}

#ifdef BLKSTACK_DEBUG_CHECKS

// Without the check the death tests' child would wait forever; exiting
// cleanly instead makes EXPECT_DEATH fail rather than hang.
void ExitIfStillAliveAfter(std::chrono::seconds limit) {
  std::thread([limit] {
    std::this_thread::sleep_for(limit);
    std::_Exit(0);
  }).detach();
}

TEST(MempoolDeathTest, WaitingWhileOwningAnElementOfThePoolAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ExitIfStillAliveAfter(10s);
        Mempool<int> pool("seed004-pool", 1, 1);
        int* held = pool.alloc(Wait::kNoWait);
        // Nobody else could ever free `held`: this would hang forever.
        int* more = pool.alloc(Wait::kMayWait);
        pool.free(more);
        pool.free(held);
      },
      "mempool 'seed004-pool'.*seed 004");
}

TEST(MempoolDeathTest, WaitingOnABioSetWhileOwningOneOfItsBiosAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ExitIfStillAliveAfter(10s);
        BioSet set("seed004-bioset", 1, 1);
        Bio* held = set.alloc(Wait::kNoWait);
        Bio* more = set.alloc(Wait::kMayWait);
        more->put();
        held->put();
      },
      "mempool 'seed004-bioset'.*seed 004");
}

// The check is per pool element ownership, not per thread: once the owned
// element is freed, waiting on the pool is fine again (another thread frees
// the element the waiter gets).
TEST(Mempool, WaitingAfterFreeingWhatWasOwnedIsAllowed) {
  Mempool<int> pool("freed-first", 1, 1);
  int* mine = pool.alloc(Wait::kNoWait);
  pool.free(mine);
  int* theirs = nullptr;
  std::thread other([&] { theirs = pool.alloc(Wait::kNoWait); });
  other.join();
  ASSERT_NE(theirs, nullptr);
  std::thread freer([&] {
    std::this_thread::sleep_for(20ms);
    pool.free(theirs);
  });
  int* got = nullptr;
  {
    Watchdog watchdog(10s, "WaitingAfterFreeingWhatWasOwnedIsAllowed");
    got = pool.alloc(Wait::kMayWait);
  }
  freer.join();
  EXPECT_EQ(got, theirs);
  pool.free(got);
}

#else

TEST(MempoolDeathTest, DISABLED_NeedsDebugChecks) {}

#endif  // BLKSTACK_DEBUG_CHECKS

}  // namespace
}  // namespace blkstack
