// A verified workload for tests that change a queue under load (switching
// schedulers): four threads, each its own issuer, write blocks of their
// own region and read blocks back, checking every read against a model of
// the data they wrote and every bio for exactly one successful completion.
// With `flushes`, one write in 8 is PREFLUSH|FUA and one round in 16 adds a
// flush, so the flush machinery is switched under too.
#pragma once

#include <atomic>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "blkstack/disk.h"
#include "mq_test_util.h"

namespace blkstack::mq_testing {

class VerifiedWorkload {
 public:
  static constexpr unsigned kThreads = 4, kBlocks = 64, kSectors = 8;

  struct Options {
    bool flushes = true;             // FUA writes and flushes among the I/O
    uint32_t seed_stride = 1000000;  // thread t's data seeds start at t * this + 1
  };

  // Starts the threads.
  VerifiedWorkload(Disk& disk, Options o) : disk_(disk), o_(o) {
    for (unsigned t = 0; t < kThreads; ++t) threads_.emplace_back([this, t] { loop(t); });
  }
  explicit VerifiedWorkload(Disk& disk) : VerifiedWorkload(disk, Options{}) {}
  ~VerifiedWorkload() { stop(); }
  VerifiedWorkload(const VerifiedWorkload&) = delete;
  VerifiedWorkload& operator=(const VerifiedWorkload&) = delete;

  // Ends the threads after their current round and waits for them.
  void stop() {
    stop_ = true;
    for (auto& th : threads_)
      if (th.joinable()) th.join();
  }
  // Bios that failed or completed other than once, and reads that did not
  // return what the model says.
  int failures() const { return failures_.load(); }
  // Bios completed.
  int ios() const { return ios_.load(); }

 private:
  void loop(unsigned t) {
    std::vector<uint32_t> model(kBlocks, 0);  // seed of each block's data
    std::mt19937 rng(t);
    uint32_t seed = t * o_.seed_stride + 1;
    auto run = [&](TestBio& b) {
      b.submit();
      while (!b.done()) std::this_thread::yield();
      if (b.calls.load() != 1 || b.status.load() != Status::kOk) failures_++;
      ios_++;
    };
    while (!stop_.load()) {
      const unsigned blk = rng() % kBlocks;
      TestBio w;
      w.init_data(disk_, Op::kWrite, (t * kBlocks + blk) * kSectors, kSectors);
      w.buf = Pattern(w.buf.size(), ++seed);
      w.segs[0] = Segment(w.buf.data(), static_cast<uint32_t>(w.buf.size()));
      if (o_.flushes && rng() % 8 == 0)
        w.bio.set_flags(BioFlag::kFua | BioFlag::kPreflush);
      run(w);
      model[blk] = seed;
      if (o_.flushes && rng() % 16 == 0) {
        TestBio f;
        f.init_range(disk_, Op::kFlush, 0, 0);
        run(f);
      }
      const unsigned rblk = rng() % kBlocks;
      TestBio r;
      r.init_data(disk_, Op::kRead, (t * kBlocks + rblk) * kSectors, kSectors);
      run(r);
      const auto want = model[rblk] ? Pattern(r.buf.size(), model[rblk])
                                    : std::vector<std::byte>(r.buf.size());
      if (r.buf != want) failures_++;
    }
  }

  Disk& disk_;
  const Options o_;
  std::atomic<bool> stop_{false};
  std::atomic<int> failures_{0}, ios_{0};
  std::vector<std::thread> threads_;  // last: started after everything they use
};

}  // namespace blkstack::mq_testing
