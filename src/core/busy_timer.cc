// The safety net of BioGate: a gate whose driver said busy and never says
// resume() is retried after BioDriver::kBusyRetryNs. One thread serves
// every gate; it sleeps on a condition variable until the earliest
// deadline, and exists only once a driver has said busy.
#include <sys/prctl.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "blkstack/submit.h"
#include "core/bio_gate.h"
#include "core/clock.h"

namespace blkstack {
namespace {

class BusyTimer {
 public:
  // One of gate, bio and fn is set.
  struct Entry {
    BioGate* gate = nullptr;      // retry() this gate, or
    Bio* bio = nullptr;           // submit_bio() this bio, or
    void (*fn)(void*) = nullptr;  // call fn(arg)
    void* arg = nullptr;
    uint64_t deadline_ns = 0;
  };

  void arm(const Entry& e, uint64_t delay_ns) {
    std::lock_guard lock(lock_);
    armed_.push_back(e);
    armed_.back().deadline_ns = now_ns() + delay_ns;
    if (!started_) {
      std::thread([this] { run(); }).detach();
      started_ = true;
    }
    cv_.notify_all();
  }

  void disarm(BioGate& gate) {
    std::unique_lock lock(lock_);
    std::erase_if(armed_, [&](const Entry& e) { return e.gate == &gate; });
    // A retry in progress may still touch the gate: wait for it.
    idle_.wait(lock, [&] { return running_ != &gate; });
  }

 private:
  void run() {
    prctl(PR_SET_NAME, "blkstack-busy", 0, 0, 0);
    std::unique_lock lock(lock_);
    for (;;) {
      if (armed_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto earliest = armed_.begin();
      for (auto it = armed_.begin(); it != armed_.end(); ++it) {
        if (it->deadline_ns < earliest->deadline_ns) earliest = it;
      }
      const uint64_t now = now_ns();
      if (earliest->deadline_ns > now) {
        cv_.wait_for(lock, std::chrono::nanoseconds(earliest->deadline_ns - now));
        continue;
      }
      const Entry e = *earliest;
      armed_.erase(earliest);
      running_ = e.gate;
      lock.unlock();
      // Each may arm again: without the lock.
      if (e.gate)
        e.gate->retry();
      else if (e.bio)
        submit_bio(*e.bio);
      else
        e.fn(e.arg);
      lock.lock();
      running_ = nullptr;
      idle_.notify_all();
    }
  }

  std::mutex lock_;
  std::condition_variable cv_;
  std::condition_variable idle_;
  std::vector<Entry> armed_;  // a handful: one per stalled gate
  BioGate* running_ = nullptr;
  bool started_ = false;
};

// Never destroyed: disks may outlive static destruction.
BusyTimer& timer() {
  static BusyTimer* t = new BusyTimer;
  return *t;
}

}  // namespace

void arm_busy_timer(BioGate& gate, uint64_t delay_ns) {
  timer().arm({.gate = &gate}, delay_ns);
}

void resubmit_busy(Bio& bio, const BioStart& start) {
  bio.restart(start);
  timer().arm({.bio = &bio}, BioDriver::kBusyRetryNs);
}

void call_after_busy_retry(void (*fn)(void*), void* arg) {
  timer().arm({.fn = fn, .arg = arg}, BioDriver::kBusyRetryNs);
}

void disarm_busy_timer(BioGate& gate) { timer().disarm(gate); }

}  // namespace blkstack
