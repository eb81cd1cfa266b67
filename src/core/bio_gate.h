// BioGate: back-pressure for a bio-based disk (seed 000). What a request
// queue gets from its tags and from stopping and starting a hardware queue,
// for a driver that sees bios.
//
// Every disk has one. It is in the path (Disk::gated()) while its driver
// declared a bio depth or batches (BioQueueConfig), or from the moment its
// driver says busy until nothing waits any more; otherwise submit_bio()
// calls the driver directly: the plain path pays one predictable branch.
//
// Parked bios wait in one FIFO, in the order they reached the gate; once
// one is parked every later bio queues behind it, so no bio passes a parked
// flush and no flush passes a parked write. One thread at a time sends them
// out again (draining_), always from a submit context and never nested
// inside another driver's submit() (submit.cc runs drains from its loop;
// a thread outside one, resume() from a completion, runs it at once). The
// submitter never waits: a bio that cannot go parks and its thread moves on.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "blkstack/bio.h"
#include "blkstack/driver/bio_driver.h"

namespace blkstack {

class Disk;

// The gate's counters, for the disk's statistics.
struct BioGateStats {
  uint64_t busy = 0;             // times the driver said busy
  uint64_t parked = 0;           // bios parked (each time)
  uint64_t longest_park_ns = 0;  // the longest a bio waited parked
};

class BioGate {
 public:
  BioGate(Disk& disk, BioDriver& driver, BioQueueConfig config, std::atomic<bool>& gated);
  ~BioGate();
  BioGate(const BioGate&) = delete;
  BioGate& operator=(const BioGate&) = delete;

  Disk& disk() { return disk_; }
  unsigned depth() const { return depth_; }

  // A bio that passed submit_bio()'s checks, from inside its submit path:
  // to the driver, into the thread's plug, or parked.
  void submit(Bio& bio);
  // The bios of one disk gathered under a plug, in order (from a submit
  // context): to the driver as a batch, as far as there is room.
  void submit_batch(BioList& bios);
  // BioDriver::busy(), BioDriver::resume().
  void busy(Bio& bio);
  void resume() { kick(true); }
  // The timer's safety net: like resume().
  void retry();
  // A counted bio completed or left for another device: gives back its slot.
  static void release(Bio& bio);
  // Sends parked bios out until none is left or the driver is full; run by
  // submit.cc, on the thread that took draining_, inside a submit context.
  void drain();
  // Removal: parked bios fail with Status::kOffline, so do later ones.
  void shutdown();
  // Takes `bio` back if it is parked here.
  bool cancel(Bio& bio);
  BioGateStats stats() const;

  // Link for the thread's list of gates to drain (submit.cc).
  BioGate* next_pending = nullptr;

 private:
  bool take_slot();
  void put_slot() { in_driver_.fetch_sub(1, std::memory_order_seq_cst); }
  // Calls the driver for one bio taken from the fast path or the list.
  void dispatch(Bio& bio, bool last);
  void park(Bio& bio);
  // Starts a drain unless one runs, the driver is stalled or nothing waits;
  // `unstall`: room came back (resume, timer, a counted completion).
  void kick(bool unstall);
  // With lock_ held: whether the gate may go back to the plain path.
  void update_gated_locked();
  void note_park_time(const Bio& bio, uint64_t now);

  Disk& disk_;
  BioDriver& driver_;
  const unsigned depth_;  // 0: not counted
  const bool batches_;
  std::atomic<bool>& gated_;  // the disk's flag read by submit_bio()
  // Bios inside the driver (counted mode).
  std::atomic<uint32_t> in_driver_{0};
  // Bios parked, plus the one a drain is sending: a new bio takes the fast
  // path only when this is 0, so it never passes one that waits.
  std::atomic<uint32_t> backlog_{0};

  mutable std::mutex lock_;
  BioList parked_;
  std::atomic<bool> stalled_{false};  // the driver said busy: wait for room
  bool draining_ = false;             // a drain is scheduled or running
  bool dead_ = false;                 // shut down
  bool timer_armed_ = false;
  Bio* dispatching_ = nullptr;  // the parked bio a drain is sending
  bool dispatching_busy_ = false;
  BioGateStats stats_;
};

// The safety-net timer of every gate: one thread, started on first use.
// arm() calls gate.retry() once, `delay_ns` from now; disarm() undoes it
// and waits for a retry() in progress on that gate to return.
void arm_busy_timer(BioGate& gate, uint64_t delay_ns);
void disarm_busy_timer(BioGate& gate);
// For an owner that sends busy work again its own way (an export's
// write-zeroes, issued anew whole): calls fn(arg) once, from the timer's
// thread, BioDriver::kBusyRetryNs from now. `arg` must live until then.
void call_after_busy_retry(void (*fn)(void*), void* arg);

// In submit.cc: runs gate.drain() from the submit loop of this thread
// (after the driver call in progress returns, if there is one).
void schedule_gate_drain(BioGate& gate);
// In submit.cc: the bios a Plug gathered for gated disks, as batches.
void submit_plugged_bios(BioList& bios);

}  // namespace blkstack
