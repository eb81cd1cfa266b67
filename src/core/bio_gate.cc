#include "core/bio_gate.h"

#include <algorithm>
#include <thread>

#include "blkstack/debug/submit_context.h"
#include "blkstack/disk.h"
#include "blkstack/plug.h"
#include "core/clock.h"

namespace blkstack {

void BioDriver::busy(Bio& bio) { disk_->bio_gate().busy(bio); }

void BioDriver::resume() { disk_->bio_gate().resume(); }

BioGate::BioGate(Disk& disk, BioDriver& driver, BioQueueConfig config,
                 std::atomic<bool>& gated)
    : disk_(disk),
      driver_(driver),
      depth_(config.depth),
      batches_(config.batches),
      gated_(gated) {
  gated_.store(depth_ != 0 || batches_, std::memory_order_relaxed);
}

BioGate::~BioGate() { disarm_busy_timer(*this); }

bool BioGate::take_slot() {
  if (depth_ == 0) return true;
  uint32_t n = in_driver_.load(std::memory_order_relaxed);
  do {
    if (n >= depth_) return false;
  } while (!in_driver_.compare_exchange_weak(n, n + 1, std::memory_order_seq_cst));
  return true;
}

void BioGate::dispatch(Bio& bio, bool last) {
  bio.gate_counted_ = depth_ != 0;  // before the call: it may complete inside
  if (batches_)
    driver_.submit_batch(bio, last);
  else
    driver_.submit(bio);
}

void BioGate::submit(Bio& bio) {
  if (batches_) {
    if (Plug* plug = Plug::current()) {
      plug->add_bio(bio);
      return;
    }
  }
  if (backlog_.load(std::memory_order_seq_cst) == 0 && take_slot()) {
    dispatch(bio, true);
    return;
  }
  park(bio);
}

void BioGate::submit_batch(BioList& bios) {
  debug::SubmitScope scope(disk_.name().c_str());
  Disk::SubmitGuard guard(disk_);
  // A slot for the next bio is taken before the current one goes, so that
  // the driver learns which bio is the last it gets.
  Bio* b = bios.pop_front();
  bool have = backlog_.load(std::memory_order_seq_cst) == 0 && take_slot();
  while (b != nullptr) {
    if (!have || backlog_.load(std::memory_order_seq_cst) != 0) {
      if (have) put_slot();
      park(*b);
      while (Bio* rest = bios.pop_front()) park(*rest);
      return;
    }
    Bio* next = bios.pop_front();
    const bool next_have = next != nullptr && take_slot();
    dispatch(*b, !next_have);
    b = next;
    have = next_have;
  }
}

void BioGate::park(Bio& bio) {
  // NOWAIT I/O does not wait for room, as for a tag (Queue::park_for_tag).
  if (bio.has_flag(BioFlag::kNowait)) [[unlikely]] {
    bio.complete(Status::kAgain);
    return;
  }
  bool start = false;
  bool dead;
  {
    std::lock_guard lock(lock_);
    dead = dead_;
    if (!dead) {
      parked_.push_back(&bio);
      // Before reading the room, which release() frees before it reads
      // the backlog: one of the two sees the other.
      backlog_.fetch_add(1, std::memory_order_seq_cst);
      ++stats_.parked;
      bio.driver_data = now_ns();  // the driver does not own it while parked
      gated_.store(true, std::memory_order_relaxed);
      start = !draining_ && !stalled_.load(std::memory_order_relaxed) &&
              (depth_ == 0 || in_driver_.load(std::memory_order_seq_cst) < depth_);
      draining_ = draining_ || start;
    }
  }
  if (dead) [[unlikely]] {
    bio.complete(Status::kOffline);
    return;
  }
  if (start) schedule_gate_drain(*this);
}

void BioGate::busy(Bio& bio) {
  if (bio.gate_counted_) {
    bio.gate_counted_ = false;
    put_slot();  // no kick: the driver is full
  }
  bool arm = false;
  bool dead;
  {
    std::lock_guard lock(lock_);
    dead = dead_;
    if (!dead) {
      ++stats_.busy;
      if (&bio == dispatching_) {
        dispatching_busy_ = true;  // still in the backlog, since when it was
      } else {
        backlog_.fetch_add(1, std::memory_order_seq_cst);
        ++stats_.parked;
        bio.driver_data = now_ns();
      }
      parked_.push_front(&bio);  // the oldest: it goes first again
      stalled_.store(true, std::memory_order_release);
      gated_.store(true, std::memory_order_relaxed);
      arm = !timer_armed_;
      timer_armed_ = true;
    }
  }
  if (dead) [[unlikely]] {
    bio.complete(Status::kOffline);
    return;
  }
  if (arm) arm_busy_timer(*this, BioDriver::kBusyRetryNs);
}

void BioGate::release(Bio& bio) {
  bio.gate_counted_ = false;
  BioGate& g = bio.disk()->bio_gate();
  g.put_slot();
  if (g.backlog_.load(std::memory_order_seq_cst) != 0) g.kick(true);
}

void BioGate::retry() {
  {
    std::lock_guard lock(lock_);
    timer_armed_ = false;
  }
  kick(true);
}

void BioGate::kick(bool unstall) {
  {
    std::lock_guard lock(lock_);
    if (unstall) stalled_.store(false, std::memory_order_relaxed);
    if (draining_ || dead_ || stalled_.load(std::memory_order_relaxed) ||
        parked_.empty() ||
        (depth_ != 0 && in_driver_.load(std::memory_order_seq_cst) >= depth_)) {
      update_gated_locked();
      return;
    }
    draining_ = true;
  }
  schedule_gate_drain(*this);
}

void BioGate::update_gated_locked() {
  if (depth_ != 0 || batches_) return;  // always in the path
  if (parked_.empty() && !draining_ && !stalled_.load(std::memory_order_relaxed))
    gated_.store(false, std::memory_order_relaxed);
}

void BioGate::note_park_time(const Bio& bio, uint64_t now) {
  const uint64_t waited = now > bio.driver_data ? now - bio.driver_data : 0;
  stats_.longest_park_ns = std::max(stats_.longest_park_ns, waited);
}

void BioGate::drain() {
  debug::SubmitScope scope(disk_.name().c_str());
  Disk::SubmitGuard guard(disk_);
  std::unique_lock lock(lock_);
  for (;;) {
    if (dispatching_ != nullptr) {
      if (!dispatching_busy_) backlog_.fetch_sub(1, std::memory_order_seq_cst);
      dispatching_ = nullptr;
    }
    if (dead_ || stalled_.load(std::memory_order_relaxed) || parked_.empty() ||
        !take_slot()) {
      draining_ = false;
      update_gated_locked();
      return;
    }
    Bio* b = parked_.pop_front();
    dispatching_ = b;
    dispatching_busy_ = false;
    note_park_time(*b, now_ns());
    const bool last =
        parked_.empty() ||
        (depth_ != 0 && in_driver_.load(std::memory_order_relaxed) >= depth_);
    lock.unlock();
    dispatch(*b, last);
    lock.lock();
  }
}

void BioGate::shutdown() {
  BioList parked;
  {
    std::lock_guard lock(lock_);
    dead_ = true;
    parked.splice_back(parked_);
  }
  disarm_busy_timer(*this);
  while (Bio* b = parked.pop_front()) {
    backlog_.fetch_sub(1, std::memory_order_seq_cst);
    b->complete(Status::kOffline);
  }
  // A drain may be scheduled on a thread that has yet to run it (it does,
  // without waiting, and finds the gate dead): the gate must outlive it.
  for (;;) {
    {
      std::lock_guard lock(lock_);
      if (!draining_) return;
    }
    std::this_thread::yield();
  }
}

bool BioGate::cancel(Bio& bio) {
  std::lock_guard lock(lock_);
  if (!parked_.remove(&bio)) return false;
  backlog_.fetch_sub(1, std::memory_order_seq_cst);
  update_gated_locked();
  return true;
}

BioGateStats BioGate::stats() const {
  std::lock_guard lock(lock_);
  return stats_;
}

}  // namespace blkstack
