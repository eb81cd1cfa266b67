#include "issuer_weight.h"

#include <fmt/format.h>

#include "blkstack/disk.h"
#include "blkstack/driver/queue.h"
#include "blkstack/error.h"

namespace blkstack::bench {
namespace {

// The disk's bfq instance, or nullptr.
Scheduler* bfq_of(Disk& disk) {
  auto* q = dynamic_cast<Queue*>(&disk.driver());
  if (q == nullptr || q->scheduler_name() != "bfq") return nullptr;
  return q->scheduler();
}

}  // namespace

void check_bfq_weight(std::string_view job, Disk& disk) {
  if (bfq_of(disk) != nullptr) return;
  auto* q = dynamic_cast<Queue*>(&disk.driver());
  throw Error(fmt::format(
      "job '{}': bfq_weight needs the bfq scheduler, and {} has {} (add sched=bfq to "
      "its spec)",
      job, disk.name(), q != nullptr ? "'" + q->scheduler_name() + "'" : "no scheduler"));
}

IssuerWeight::IssuerWeight(std::string_view job, Disk& disk, IssuerId issuer,
                           unsigned weight)
    : disk_(disk), issuer_(issuer), set_(weight != 0) {
  if (!set_) return;
  check_bfq_weight(job, disk_);
  bfq_of(disk_)->set_tunable("weights", fmt::format("{}:{}", issuer_, weight));
}

IssuerWeight::~IssuerWeight() {
  if (!set_) return;
  if (Scheduler* bfq = bfq_of(disk_))
    bfq->set_tunable("weights", fmt::format("{}:default", issuer_));
}

}  // namespace blkstack::bench
