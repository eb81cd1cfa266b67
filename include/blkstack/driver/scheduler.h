// Scheduler: an I/O scheduler (the kernel's elevator_type), and the registry
// of schedulers by name.
//
// A queue with a scheduler inserts every request into it and asks it, when
// the hardware queue runs, for the next request to dispatch. "none" is the
// absence of a scheduler: requests go straight to the driver when it is
// idle, else through the software queues in FIFO order. Tunables are the
// files of /sys/block/*/queue/iosched/, as name=value strings.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace blkstack {

class Bio;
class HwQueue;
class Queue;
class Request;

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // Takes a request (at_head: a requeue that should go first).
  virtual void insert(HwQueue& hctx, Request& rq, bool at_head) = 0;
  // The next request to send to the driver, or nullptr.
  virtual Request* dispatch(HwQueue& hctx) = 0;
  virtual bool has_work(const HwQueue& hctx) const = 0;
  // Offers a bio to merge into a request the scheduler holds. Returns true
  // if it merged (using Queue::try_merge_bio).
  virtual bool bio_merge(Queue& q, HwQueue& hctx, Bio& bio) {
    (void)q, (void)hctx, (void)bio;
    return false;
  }
  // `next` was merged into `rq` and leaves the scheduler.
  virtual void requests_merged(Request& rq, Request& next) { (void)rq, (void)next; }
  // A request the scheduler dispatched has completed.
  virtual void completed(Request& rq, uint64_t now_ns) { (void)rq, (void)now_ns; }

  virtual std::vector<std::pair<std::string, std::string>> tunables() const { return {}; }
  // Throws Error naming the tunable or the bad value.
  virtual void set_tunable(std::string_view name, std::string_view value);
};

struct SchedulerType {
  std::string_view name;
  std::string_view description;
  // nullptr for "none".
  std::unique_ptr<Scheduler> (*create)(Queue& q);
};

std::span<const SchedulerType* const> scheduler_types();
// Throws Error naming the unknown scheduler and listing the known ones.
const SchedulerType& find_scheduler_type(std::string_view name);

}  // namespace blkstack
