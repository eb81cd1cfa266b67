// The file driver over a host I/O queue the test runs (ScopedHostIoFactory):
// short transfers are resumed, transient errors retried, real errors
// mapped; the flush machinery's order is checked against the journal of
// host operations; polled I/O goes to the poll queues and completes only
// when polled. The last tests poll real io_uring rings.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include "blkstack/block_handle.h"
#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/io_context.h"
#include "blkstack/plug.h"
#include "blkstack/submit.h"
#include "drivers/host_io.h"
#include "drivers/uring_queue.h"
#include "file_test_util.h"
#include "test_util.h"

namespace blkstack {
namespace {

namespace fs = std::filesystem;
using testing_util::Done;
using testing_util::record_done;

// Every host operation the driver asked for, in order, and those not yet
// done. Shared by all queues of one disk.
struct Journal {
  struct Entry {
    HostIo::Kind kind;
    int rw_flags;
    uint64_t offset;
    uint64_t bytes;     // asked for: iovec total, or fallocate length
    unsigned queue;     // hardware queue index
    bool polled;        // on a poll queue
    uint64_t delay_ns;  // the back-off asked for before it
    int seq_done = -1;  // when it completed (order among completions)
  };
  struct Pending {
    size_t entry;
    HostIo io;
    void* ctx;
    HostIoQueue::Callback cb;
  };

  std::mutex mu;
  std::condition_variable cv;
  std::vector<Entry> entries;
  std::deque<Pending> pending;
  int completions = 0;

  // How the operations are done when auto-completed: at most `cap` bytes
  // per read or write (0: all), and `fail_first` returned instead of the
  // first attempt of every operation (0: none).
  uint64_t cap = 0;
  int fail_first = 0;
  std::set<std::tuple<void*, HostIo::Kind, uint64_t>> failed_once;  // by fail_first
  // `fail_always` returned for every attempt, up to `fail_limit` attempts
  // in all (then they succeed: an unbounded retry ends instead of hanging).
  int fail_always = 0;
  int fail_limit = 0;
  int failed = 0;
  int fail_write_at = -1;  // the nth write (0-based) fails with fail_errno
  int fail_errno = 0;
  int writes_seen = 0;
  int fd = -1;

  size_t size() {
    std::lock_guard l(mu);
    return entries.size();
  }
  std::vector<Entry> snapshot() {
    std::lock_guard l(mu);
    return entries;
  }
  // Waits until `n` operations are pending (a bounded wait: a test that
  // expects more than the driver sends fails rather than hangs).
  bool wait_pending(size_t n) {
    std::unique_lock l(mu);
    return cv.wait_for(l, std::chrono::seconds(5), [&] { return pending.size() >= n; });
  }

  // Does one operation for real, as the kernel would, within cap.
  int perform(const Pending& p) {
    const HostIo& io = p.io;
    if (fail_first != 0 && failed_once.insert({p.ctx, io.kind, io.offset}).second)
      return fail_first;
    if (fail_always != 0 && failed < fail_limit) {
      ++failed;
      return fail_always;
    }
    switch (io.kind) {
      case HostIo::kRead:
      case HostIo::kWrite: {
        std::vector<iovec> iov(io.iov, io.iov + io.iovcnt);
        if (cap != 0) {  // cut the vector to cap bytes
          uint64_t left = cap;
          size_t i = 0;
          for (; i < iov.size() && left > 0; ++i) {
            if (iov[i].iov_len > left) iov[i].iov_len = left;
            left -= iov[i].iov_len;
          }
          iov.resize(i);
        }
        if (io.kind == HostIo::kWrite && writes_seen++ == fail_write_at)
          return -fail_errno;
        ssize_t r = io.kind == HostIo::kRead
                        ? preadv(fd, iov.data(), static_cast<int>(iov.size()),
                                 static_cast<off_t>(io.offset))
                        : pwritev(fd, iov.data(), static_cast<int>(iov.size()),
                                  static_cast<off_t>(io.offset));
        return r < 0 ? -errno : static_cast<int>(r);
      }
      case HostIo::kFdatasync:
        return fdatasync(fd) == 0 ? 0 : -errno;
      case HostIo::kPunchHole:
      case HostIo::kZeroRange: {
        const int mode = (io.kind == HostIo::kPunchHole ? FALLOC_FL_PUNCH_HOLE
                                                        : FALLOC_FL_ZERO_RANGE) |
                         FALLOC_FL_KEEP_SIZE;
        return fallocate(fd, mode, static_cast<off_t>(io.offset),
                         static_cast<off_t>(io.len)) == 0
                   ? 0
                   : -errno;
      }
    }
    return -EINVAL;
  }

  // Completes the oldest pending operation (false if there is none). The
  // callback runs without the lock: it may queue the operation again.
  bool complete_next() {
    Pending p;
    {
      std::lock_guard l(mu);
      if (pending.empty()) return false;
      p = pending.front();
      pending.pop_front();
    }
    const int res = perform(p);
    {
      std::lock_guard l(mu);
      entries[p.entry].seq_done = completions++;
    }
    p.cb(p.ctx, res);
    return true;
  }
  void complete_all() {
    while (complete_next()) {
    }
  }
};

// One hardware queue's host I/O: records into the journal; completes in
// submit() (or poll(), on a poll queue) when `auto_complete`, else when the
// test says.
class ScriptedHostIo final : public HostIoQueue {
 public:
  ScriptedHostIo(const HostIoSetup& s, Journal& j, bool auto_complete)
      : setup_(s), journal_(j), auto_(auto_complete) {}

  bool queue(const HostIo& io, void* ctx) override {
    std::lock_guard l(journal_.mu);
    uint64_t bytes = io.len;
    if (io.kind == HostIo::kRead || io.kind == HostIo::kWrite) {
      bytes = 0;
      for (unsigned i = 0; i < io.iovcnt; ++i) bytes += io.iov[i].iov_len;
    }
    journal_.entries.push_back({io.kind, io.rw_flags, io.offset, bytes, setup_.index,
                                setup_.polled, io.delay_ns});
    journal_.pending.push_back(
        {journal_.entries.size() - 1, io, ctx, setup_.on_complete});
    journal_.cv.notify_all();
    return true;
  }
  void submit() override {
    if (auto_ && !setup_.polled) run();
  }
  int poll(uint64_t) override {
    if (!auto_) return 0;
    return run();
  }

 private:
  // Completes until nothing is pending; callbacks that queue again land in
  // the same loop (a nested submit() returns at once).
  int run() {
    if (running_) return 0;
    running_ = true;
    int n = 0;
    while (journal_.complete_next()) ++n;
    running_ = false;
    return n;
  }

  HostIoSetup setup_;
  Journal& journal_;
  bool auto_;
  bool running_ = false;
};

class FileHostIo : public ScratchDirTest {
 protected:
  void TearDown() override {
    disk_.reset();
    if (journal_.fd >= 0) close(journal_.fd);
    ScratchDirTest::TearDown();
  }

  // A file disk whose host I/O the test runs; `spec_options` add to the spec.
  void make_disk(bool auto_complete, const std::string& spec_options = "") {
    ScopedHostIoFactory factory(
        [&](const HostIoSetup& s) -> std::unique_ptr<HostIoQueue> {
          return std::make_unique<ScriptedHostIo>(s, journal_, auto_complete);
        });
    disk_ = registry_.create("file:" + path_ + ",size=4M,direct=off,partscan=0" +
                             spec_options);
    journal_.fd = open(path_.c_str(), O_RDWR);
    ASSERT_GE(journal_.fd, 0);
  }

  Journal journal_;
  DiskRegistry registry_;
  std::shared_ptr<Disk> disk_;
};

TEST_F(FileHostIo, ShortReadsAndWritesAreResumedWhereTheyStopped) {
  make_disk(/*auto_complete=*/true);
  journal_.cap = 1000;  // not a sector multiple: resumes inside an iovec
  auto data = pattern(64 << 10, 1);
  // Many segments of uneven length, so resuming crosses iovec boundaries.
  std::vector<Segment> segs;
  size_t off = 0;
  for (uint32_t len : {512u, 3584u, 4096u, 8192u, 512u, 48640u}) {
    segs.emplace_back(&data[off], len);
    off += len;
  }
  ASSERT_EQ(off, data.size());
  Bio bio;
  Done done;
  bio.init(disk_.get(), Op::kWrite, 8, segs, record_done, &done);
  submit_bio(bio);
  ASSERT_EQ(done.calls, 1);
  ASSERT_EQ(done.status, Status::kOk);

  // The file holds exactly the data, at sector 8.
  std::vector<std::byte> seen(data.size());
  ASSERT_EQ(pread(journal_.fd, seen.data(), seen.size(), 8 * 512),
            static_cast<ssize_t>(seen.size()));
  EXPECT_EQ(seen, data);
  // Each attempt began where the last one stopped.
  auto log = journal_.snapshot();
  ASSERT_GE(log.size(), data.size() / 1000);
  uint64_t expect = 8 * 512;
  for (const auto& e : log) {
    ASSERT_EQ(e.kind, HostIo::kWrite);
    EXPECT_EQ(e.offset, expect);
    expect += std::min<uint64_t>(e.bytes, 1000);
  }
  EXPECT_EQ(expect, 8 * 512 + data.size());

  // Reads are resumed the same way.
  std::vector<std::byte> back(data.size());
  BlockHandle h(disk_);
  ASSERT_EQ(h.pread(back.data(), back.size(), 8 * 512), Status::kOk);
  EXPECT_EQ(back, data);
}

TEST_F(FileHostIo, TransientErrorsAreRetriedAndNotSeen) {
  for (int err : {-EAGAIN, -ENOMEM, -EINTR}) {
    SCOPED_TRACE(strerror(-err));
    disk_.reset();
    make_disk(/*auto_complete=*/true);
    journal_.fail_first = err;
    auto data = pattern(8192, 2);
    BlockHandle h(disk_);
    ASSERT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);
    std::vector<std::byte> back(data.size());
    ASSERT_EQ(h.pread(back.data(), back.size(), 0), Status::kOk);
    EXPECT_EQ(back, data);
    // Each operation went twice: the failed attempt and the retry.
    auto log = journal_.snapshot();
    ASSERT_EQ(log.size(), 4u);
    EXPECT_EQ(log[0].offset, log[1].offset);
    EXPECT_EQ(log[2].offset, log[3].offset);
    {
      std::lock_guard l(journal_.mu);
      journal_.entries.clear();
      journal_.failed_once.clear();
    }
    close(journal_.fd);
    journal_.fd = -1;
  }
}

// A transient error that does not go away is retried with a back-off the
// host waits for (growing, bounded), a bounded number of times; then the
// request fails with the matching status instead of spinning forever on
// the ring's only reaper.
TEST_F(FileHostIo, TransientErrorsThatPersistBackOffThenFail) {
  for (auto [err, status] :
       {std::pair{-ENOMEM, Status::kIoError}, std::pair{-EAGAIN, Status::kIoError},
        std::pair{-EINTR, Status::kIoError}}) {
    SCOPED_TRACE(strerror(-err));
    disk_.reset();
    if (journal_.fd >= 0) close(journal_.fd);
    journal_.entries.clear();
    make_disk(/*auto_complete=*/true);
    journal_.fail_always = err;
    journal_.fail_limit = 1000;
    journal_.failed = 0;
    auto data = pattern(4096, 7);
    BlockHandle h(disk_);
    EXPECT_EQ(h.pwrite(data.data(), data.size(), 0), status);
    auto log = journal_.snapshot();
    ASSERT_LT(log.size(), 100u) << "retried " << log.size() << " times";
    ASSERT_GE(log.size(), 8u) << "gave up after " << log.size() << " attempts";
    EXPECT_EQ(log[0].delay_ns, 0u);
    EXPECT_EQ(log[1].delay_ns, 0u) << "the first retry goes at once";
    for (size_t i = 2; i < log.size(); ++i) {
      EXPECT_EQ(log[i].offset, 0u);
      EXPECT_GE(log[i].delay_ns, log[i - 1].delay_ns) << i;
      EXPECT_GT(log[i].delay_ns, 0u) << i;
      EXPECT_LE(log[i].delay_ns, 50'000'000u) << i;
    }
    // Waited for in all: long enough for a passing shortage, short enough
    // that a stuck request does not look like a hang.
    uint64_t total = 0;
    for (const auto& e : log) total += e.delay_ns;
    EXPECT_GE(total, 100'000'000u);
    EXPECT_LE(total, 2'000'000'000u);
    journal_.fail_always = 0;
    // The disk still works.
    EXPECT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);
  }
}

// A request past its timeout= cannot be taken from the host: the read may
// still land in the caller's buffer, the write still reach the file, and
// the host's answer would then end whichever request holds the tag by
// then. So it stays the driver's until the host answers (the kernel's
// loop driver has no timeout handler either), and the disk can go only
// after that.
TEST_F(FileHostIo, ATimedOutRequestIsNotEndedWhileTheHostHasIt) {
  make_disk(/*auto_complete=*/false, ",timeout=1ms,depth=1");
  std::vector<std::byte> buf(4096);
  Segment seg(buf.data(), buf.size());
  std::atomic<int> calls{0};
  std::atomic<Status> status{Status::kOk};
  struct Seen {
    std::atomic<int>* calls;
    std::atomic<Status>* status;
  } seen{&calls, &status};
  Bio bio;
  bio.init(
      disk_.get(), Op::kRead, 0, {&seg, 1},
      [](Bio& b) {
        auto* s = static_cast<Seen*>(b.context());
        s->status->store(b.status());
        s->calls->fetch_add(1);
      },
      &seen);
  submit_bio(bio);
  ASSERT_TRUE(journal_.wait_pending(1));
  // Many timeout periods (the queue looks every millisecond).
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(calls.load(), 0) << "the read ended (" << status_name(status.load())
                             << ") while the host still had it, with the caller's buffer";
  journal_.complete_all();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(status.load(), Status::kOk) << "the host did read it all";
}

// ...but it is not retried or resumed past its timeout: the host's next
// answer ends it, with kTimeout.
TEST_F(FileHostIo, ATimedOutRequestStopsRetryingAtTheHostsNextAnswer) {
  make_disk(/*auto_complete=*/false, ",timeout=1ms");
  journal_.fail_always = -EAGAIN;
  journal_.fail_limit = 1000;
  auto data = pattern(4096, 9);
  Segment seg(data.data(), data.size());
  Bio bio;
  Done done;
  bio.init(disk_.get(), Op::kWrite, 0, {&seg, 1}, record_done, &done);
  submit_bio(bio);
  ASSERT_TRUE(journal_.wait_pending(1));
  ASSERT_TRUE(journal_.complete_next());  // EAGAIN, before the timeout
  ASSERT_TRUE(journal_.wait_pending(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(journal_.complete_next());  // EAGAIN again, now past it
  EXPECT_EQ(done.calls, 1);
  EXPECT_EQ(done.status, Status::kTimeout);
  EXPECT_EQ(journal_.size(), 2u) << "retried past its timeout";
}

// A request's byte count is 32 bits (as the kernel's __data_len), so the
// largest max_sectors= a driver can take is what 32 bits of bytes hold:
// two 3 GiB writes merged under max_sectors=2^32-1 made one request that
// said 2 GiB and ended with kOk after writing only those.
TEST_F(FileHostIo, MergedRequestsNeverOutgrowTheirByteCount) {
  {
    ScopedHostIoFactory factory(
        [&](const HostIoSetup& s) -> std::unique_ptr<HostIoQueue> {
          return std::make_unique<ScriptedHostIo>(s, journal_, false);
        });
    // The largest max_sectors= the driver takes.
    for (const char* max : {"4294967295", "8388608", "8388607"}) {
      try {
        disk_ =
            registry_.create("file:" + path_ + ",size=8G,direct=off,max_sectors=" + max);
        break;
      } catch (const Error&) {
      }
    }
    ASSERT_TRUE(disk_);
  }
  // The host never touches this memory here: the test answers for it.
  alignas(4096) static std::byte page[4096];
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  std::vector<Segment> segs(3, Segment(page, static_cast<uint32_t>(kGiB)));
  Bio bios[2];
  Done done[2];
  {
    Plug plug;  // both wait in the plug, where they may merge
    for (int i = 0; i < 2; ++i) {
      bios[i].init(disk_.get(), Op::kWrite, static_cast<uint64_t>(i) * 3 * kGiB / 512,
                   segs, record_done, &done[i]);
      submit_bio(bios[i]);
    }
  }
  // Answer every host write as the kernel would (at most about 2 GiB a
  // call), counting what the driver asked for.
  uint64_t asked = 0;
  for (int rounds = 0; rounds < 100 && done[0].calls + done[1].calls < 2; ++rounds) {
    Journal::Pending p;
    {
      std::lock_guard l(journal_.mu);
      if (journal_.pending.empty()) break;
      p = journal_.pending.front();
      journal_.pending.pop_front();
    }
    uint64_t bytes = 0;
    for (unsigned i = 0; i < p.io.iovcnt; ++i) bytes += p.io.iov[i].iov_len;
    const uint64_t did = std::min<uint64_t>(bytes, 0x7ffff000);
    asked += did;
    p.cb(p.ctx, static_cast<int>(did));
  }
  EXPECT_EQ(done[0].calls, 1);
  EXPECT_EQ(done[1].calls, 1);
  EXPECT_EQ(asked, 6 * kGiB) << "the bios completed with only part of them written";
}

TEST_F(FileHostIo, HostErrorsFailExactlyTheirOwnIo) {
  for (auto [err, status] :
       {std::pair{EIO, Status::kIoError}, std::pair{ENOSPC, Status::kNoSpace},
        std::pair{EROFS, Status::kReadOnly}}) {
    SCOPED_TRACE(strerror(err));
    disk_.reset();
    if (journal_.fd >= 0) close(journal_.fd);
    journal_.entries.clear();
    journal_.writes_seen = 0;
    make_disk(/*auto_complete=*/true);
    journal_.fail_write_at = 1;  // the second of three writes
    journal_.fail_errno = err;
    auto data = pattern(3 * 4096, 3);
    Bio bios[3];
    Done done[3];
    for (int i = 0; i < 3; ++i) {
      Segment seg(&data[i * 4096], 4096);
      bios[i].init(disk_.get(), Op::kWrite, static_cast<uint64_t>(i) * 64, {&seg, 1},
                   record_done, &done[i]);
      submit_bio(bios[i]);
    }
    for (int i = 0; i < 3; ++i) EXPECT_EQ(done[i].calls, 1) << i;
    EXPECT_EQ(done[0].status, Status::kOk);
    EXPECT_EQ(done[1].status, status);
    EXPECT_EQ(done[2].status, Status::kOk);
  }
}

TEST_F(FileHostIo, FlushIsIssuedAfterTheWritesItCoversCompleted) {
  make_disk(/*auto_complete=*/false);
  auto data = pattern(4096, 4);
  Segment seg(data.data(), 4096);
  // Two writes, both completed.
  Bio w[2];
  Done wd[2];
  for (int i = 0; i < 2; ++i) {
    w[i].init(disk_.get(), Op::kWrite, static_cast<uint64_t>(i) * 8, {&seg, 1},
              record_done, &wd[i]);
    submit_bio(w[i]);
  }
  ASSERT_TRUE(journal_.wait_pending(2));
  journal_.complete_all();
  ASSERT_EQ(wd[0].calls + wd[1].calls, 2);
  // A third write, still in flight, and then a flush.
  Bio w3;
  Done w3d;
  w3.init(disk_.get(), Op::kWrite, 64, {&seg, 1}, record_done, &w3d);
  submit_bio(w3);
  ASSERT_TRUE(journal_.wait_pending(1));
  Bio flush;
  Done fd;
  flush.init_nodata(disk_.get(), Op::kFlush, 0, 0, record_done, &fd);
  flush.set_flags(BioFlag::kPreflush);
  submit_bio(flush);
  ASSERT_TRUE(journal_.wait_pending(2));
  auto log = journal_.snapshot();
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(log[3].kind, HostIo::kFdatasync);
  // Every write that completed before the flush was submitted completed
  // on the host before the fdatasync was even queued.
  EXPECT_GE(log[0].seq_done, 0);
  EXPECT_GE(log[1].seq_done, 0);
  EXPECT_EQ(fd.calls, 0) << "the flush completed before its fdatasync did";
  journal_.complete_all();
  EXPECT_EQ(fd.calls, 1);
  EXPECT_EQ(fd.status, Status::kOk);
  EXPECT_EQ(w3d.calls, 1);
}

TEST_F(FileHostIo, PreflushWriteWaitsForItsFlushAndFuaIsDsync) {
  make_disk(/*auto_complete=*/false);
  auto data = pattern(4096, 5);
  Segment seg(data.data(), 4096);
  Bio bio;
  Done done;
  bio.init(disk_.get(), Op::kWrite, 16, {&seg, 1}, record_done, &done);
  bio.set_flags(BioFlag::kPreflush | BioFlag::kFua);
  submit_bio(bio);
  ASSERT_TRUE(journal_.wait_pending(1));
  // Only the flush: the data must not go before the flush is done.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto log = journal_.snapshot();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].kind, HostIo::kFdatasync);
  ASSERT_TRUE(journal_.complete_next());
  ASSERT_TRUE(journal_.wait_pending(1));
  log = journal_.snapshot();
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[1].kind, HostIo::kWrite);
  EXPECT_EQ(log[1].rw_flags, RWF_DSYNC) << "FUA is a write with RWF_DSYNC";
  EXPECT_EQ(done.calls, 0);
  journal_.complete_all();
  EXPECT_EQ(done.calls, 1);
  EXPECT_EQ(done.status, Status::kOk);
  // FUA needs no flush after it: nothing more was asked of the host.
  EXPECT_EQ(journal_.size(), 2u);
}

// --- polled I/O -------------------------------------------------------------

TEST_F(FileHostIo, PolledIoGoesToThePollQueueAndCompletesOnlyWhenPolled) {
  make_disk(/*auto_complete=*/true, ",poll_queues=1");
  EXPECT_TRUE(testing_util::Contains(disk_->describe(), "poll_queues=1"));
  ASSERT_TRUE(disk_->driver().can_poll());
  auto data = pattern(8 * 4096, 6);
  ASSERT_EQ(pwrite(journal_.fd, data.data(), data.size(), 0),
            static_cast<ssize_t>(data.size()));

  IoContext ctx(16);
  std::vector<std::byte> buf(data.size());
  std::vector<Iocb> cbs(8);
  std::vector<Iocb*> list;
  for (int i = 0; i < 8; ++i) {
    cbs[i] = Iocb::pread(disk_.get(), &buf[i * 4096], 4096, i * 4096ull, i);
    cbs[i].flags = kIocbHipri;
    list.push_back(&cbs[i]);
  }
  Iocb plain = Iocb::pread(disk_.get(), nullptr, 0, 0, 99);  // filled below
  std::vector<std::byte> plain_buf(4096);
  plain.buf = plain_buf.data();
  plain.len = 4096;
  list.push_back(&plain);
  ASSERT_EQ(ctx.submit(list), 9);
  // The plain one completed in submit (its queue completes there); the
  // polled ones are queued on the poll queue and wait.
  auto log = journal_.snapshot();
  ASSERT_EQ(log.size(), 9u);
  int polled = 0;
  for (const auto& e : log) {
    polled += e.polled;
    EXPECT_EQ(e.polled, e.queue == 1) << "queue 1 is the poll queue";
  }
  EXPECT_EQ(polled, 8);
  IoEvent ev[16];
  // get_events polls them: all nine events come.
  int got = 0;
  while (got < 9) {
    int n = ctx.get_events(1, {ev + got, 16 - static_cast<size_t>(got)},
                           std::chrono::seconds(5));
    ASSERT_GT(n, 0);
    got += n;
  }
  for (int i = 0; i < 9; ++i) EXPECT_EQ(ev[i].res, 4096) << ev[i].user_data;
  EXPECT_EQ(buf, data);
}

TEST_F(FileHostIo, GetEventsTimesOutWhilePolledIoIsNotDone) {
  make_disk(/*auto_complete=*/false, ",poll_queues=1");
  IoContext ctx(4);
  std::vector<std::byte> buf(4096);
  Iocb cb = Iocb::pread(disk_.get(), buf.data(), 4096, 0, 1);
  cb.flags = kIocbHipri;
  Iocb* one[] = {&cb};
  ASSERT_EQ(ctx.submit(one), 1);
  IoEvent ev;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(ctx.get_events(1, {&ev, 1}, std::chrono::milliseconds(30)), 0);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(30));
  // Done on the host, it still needs a poll: the next get_events does it.
  ASSERT_TRUE(journal_.wait_pending(1));
  std::thread host([&] { journal_.complete_all(); });
  host.join();
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}, std::chrono::seconds(5)), 1);
  EXPECT_EQ(ev.res, 4096);
}

// Real io_uring rings from here on.
// The real ring waits out a retry's back-off (a linked timeout) before the
// operation, and the operation then completes as usual, with no callback
// for the timeout itself.
TEST_F(FileHostIo, UringQueueStartsADelayedOperationAfterItsDelay) {
  int fd = open(path_.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  struct Seen {
    std::atomic<int> calls{0};
    std::atomic<int> res{0};
  } seen;
  {
    UringQueue ring(fd, -1, UringQueue::Options{}, [](void* ctx, int res) {
      auto* s = static_cast<Seen*>(ctx);
      s->res.store(res);
      s->calls.fetch_add(1);
    });
    auto data = pattern(4096, 8);
    iovec iov{data.data(), data.size()};
    HostIo io{HostIo::kWrite};
    io.iov = &iov;
    io.iovcnt = 1;
    io.delay_ns = 30'000'000;
    const auto start = std::chrono::steady_clock::now();
    ASSERT_TRUE(ring.queue(io, &seen));
    ring.submit();
    while (seen.calls.load() == 0 &&
           std::chrono::steady_clock::now() - start < std::chrono::seconds(5))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(30));
    ASSERT_EQ(seen.calls.load(), 1);
    EXPECT_EQ(seen.res.load(), 4096);
    std::vector<std::byte> back(4096);
    ASSERT_EQ(pread(fd, back.data(), back.size(), 0), 4096);
    EXPECT_EQ(back, data);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(seen.calls.load(), 1) << "a callback for the timeout";
  }
  close(fd);
}

class FilePoll : public FileHostIo {};

TEST_F(FilePoll, TwoThreadsPollingOneRingBothFinishWithTheRightData) {
  auto disk = registry_.create("file:" + path_ + ",size=8M,poll_queues=1");
  ASSERT_TRUE(disk->driver().can_poll());
  auto data = pattern(8 << 20, 7);
  BlockHandle h(disk);
  ASSERT_EQ(h.pwrite(data.data(), data.size(), 0), Status::kOk);

  auto worker = [&](unsigned seed, bool hipri, int* errors) {
    IoContext ctx(32);
    std::mt19937 rng(seed);
    std::vector<std::byte> buf(32 * 4096);
    std::vector<Iocb> cbs(32);
    for (int round = 0; round < 200; ++round) {
      std::vector<Iocb*> list;
      for (unsigned i = 0; i < 32; ++i) {
        const uint64_t block = rng() % (data.size() / 4096);
        cbs[i] = Iocb::pread(disk.get(), &buf[i * 4096], 4096, block * 4096, i);
        if (hipri) cbs[i].flags = kIocbHipri;
        list.push_back(&cbs[i]);
      }
      if (ctx.submit(list) != 32) {
        ++*errors;
        return;
      }
      IoEvent ev[32];
      int got = 0;
      while (got < 32) {
        const int n = ctx.get_events(1, {ev + got, 32 - static_cast<size_t>(got)},
                                     std::chrono::seconds(10));
        if (n <= 0) {
          ++*errors;  // a lost completion
          return;
        }
        got += n;
      }
      for (unsigned i = 0; i < 32; ++i) {
        const Iocb& cb = cbs[i];
        if (std::memcmp(cb.buf, &data[cb.offset], 4096) != 0) ++*errors;
      }
    }
  };
  int errors[3] = {0, 0, 0};
  std::thread a(worker, 1, true, &errors[0]);
  std::thread b(worker, 2, true, &errors[1]);
  std::thread c(worker, 3, false, &errors[2]);  // unpolled, beside them
  a.join();
  b.join();
  c.join();
  EXPECT_EQ(errors[0] + errors[1] + errors[2], 0);
}

TEST_F(FilePoll, HipriOnADiskWithoutPollQueuesCompletesAsUsual) {
  auto disk = registry_.create("file:" + path_ + ",size=1M");
  EXPECT_FALSE(disk->driver().can_poll());
  IoContext ctx(4);
  std::vector<std::byte> buf(4096);
  Iocb cb = Iocb::pread(disk.get(), buf.data(), 4096, 0, 1);
  cb.flags = kIocbHipri;
  Iocb* one[] = {&cb};
  ASSERT_EQ(ctx.submit(one), 1);
  IoEvent ev;
  ASSERT_EQ(ctx.get_events(1, {&ev, 1}, std::chrono::seconds(5)), 1);
  EXPECT_EQ(ev.res, 4096);
}

}  // namespace
}  // namespace blkstack
