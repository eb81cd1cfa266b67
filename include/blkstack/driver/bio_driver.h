// BioDriver: what a bio-based driver implements, and what a request queue
// is to the disk above it.
#pragma once

#include <cstdint>

#include "blkstack/bio.h"

namespace blkstack {

class Disk;

// What a bio-based driver asks of the block core, read once when its disk
// is made (BioDriver::bio_queue_config).
struct BioQueueConfig {
  // Bios the driver takes at a time (its tags, its ring); 0: no limit. The
  // core counts the bios inside the driver, as a tag set counts requests,
  // and parks the rest in order until one completes.
  unsigned depth = 0;
  // Bios gathered under a Plug reach submit_batch() as one batch, `last`
  // set on the final one (bd->last): a driver rings its doorbell once.
  bool batches = false;
};

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
  // A bio of a batch (BioQueueConfig::batches): gathered under a Plug, or
  // parked bios going out again. `last`: no more follow in this batch.
  virtual void submit_batch(Bio& bio, bool last) {
    (void)last;
    submit(bio);
  }
  virtual BioQueueConfig bio_queue_config() const { return {}; }
  // Called once by the Disk that owns this driver, from its constructor.
  virtual void attach(Disk& disk) { (void)disk; }
  // True for a request queue (blk-mq): it accounts requests and merges in
  // the disk statistics itself, so submit_bio() only tracks bios in flight.
  virtual bool accounts_requests() const { return false; }
  // Called by Disk::shutdown() after new I/O is refused, before waiting for
  // the I/O in flight: a queue fails what it has parked, for instance.
  virtual void shutdown() {}
  // Whether `bio`, submitted again while this disk still accounts it, is one
  // this driver held part way (waiting for memory, say) and now sends on.
  // submit_bio() then hands it straight back to submit(): it was checked
  // when it came in, and refusing it now (the disk turned read-only
  // meanwhile) would end it with pieces still out. Asked only of such bios.
  virtual bool continues(const Bio& bio) {
    (void)bio;
    return false;
  }
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

  // Busy is not an error (DESIGN.md invariant 3, seed 000). From submit()
  // or submit_batch() only, and then return: refuses `bio` because the
  // device is out of room. The core parks it, and every later bio for this
  // disk behind it, in order (no flush passes a write or is passed), and
  // submits them again once resume() is called, after kBusyRetryNs as a
  // safety net, or (with a BioQueueConfig::depth) when a counted bio
  // completes. The submitter does not wait (a later kNowait bio fails
  // with kAgain rather than park). The bio-based twin of
  // blk_mq_stop_hw_queue() and of returning BLK_STS_RESOURCE.
  void busy(Bio& bio);
  // Room again (blk_mq_start_stopped_hw_queues): sends what is parked.
  // From any thread, also from inside submit() or a completion. Inside
  // submit() they go once it returns; elsewhere submit() is called for
  // them on this thread before resume() returns (so is it from the
  // complete() of a counted bio): hold no lock that submit() takes.
  void resume();
  static constexpr uint64_t kBusyRetryNs = 1'000'000;  // 1 ms

 private:
  friend class Disk;
  Disk* disk_ = nullptr;  // set before attach()
};

}  // namespace blkstack
