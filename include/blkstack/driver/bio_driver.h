// BioDriver: what a bio-based driver implements, and what a request queue
// is to the disk above it.
#pragma once

#include <cstdint>

#include "blkstack/bio.h"

namespace blkstack {

class Disk;

// A bio-based driver (block_device_operations::submit_bio, once
// make_request_fn). submit() starts the bio and returns without blocking
// (DESIGN.md invariant 2); the bio is finished, now or later and on any
// thread, with bio.complete(status). submit() sees only bios that passed the
// checks of submit_bio() and fit the disk's limits. What the driver reports
// about the device is not here but in the disk's DiskReports
// (driver/reports.h), the same for either queue mode.
class BioDriver {
 public:
  virtual ~BioDriver() = default;
  virtual void submit(Bio& bio) = 0;
  // Called once by the Disk that owns this driver, from its constructor.
  virtual void attach(Disk& disk) { (void)disk; }
  // True for a request queue (blk-mq): it accounts requests and merges in
  // the disk statistics itself, so submit_bio() only tracks bios in flight.
  virtual bool accounts_requests() const { return false; }
  // Called by Disk::shutdown() after new I/O is refused, before waiting for
  // the I/O in flight: a queue fails what it has parked, for instance.
  virtual void shutdown() {}
  // Takes back `bio` if it is still waiting inside the driver without any
  // of it having been started (parked for a tag, and no piece split off it:
  // Bio::has_chained_children()); the caller then completes it.
  virtual bool cancel(Bio& bio) {
    (void)bio;
    return false;
  }
  // Polled I/O (BioFlag::kPolled): whether the driver has poll queues, and
  // polling them. poll() completes what is ready, waiting up to `wait_ns`
  // for the first completion; it returns how many it completed, or
  // kPollBusy when another thread is polling (and so completes them).
  static constexpr int kPollBusy = -1;
  virtual bool can_poll() const { return false; }
  virtual int poll(uint64_t wait_ns) {
    (void)wait_ns;
    return 0;
  }
};

}  // namespace blkstack
