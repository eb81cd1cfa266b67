// bfq_weight=: a bench thread's weight under the bfq scheduler. Each thread
// submits through its own IoContext, which is one issuer (Bio::issuer());
// bfq's `weights` tunable gives that issuer its weight ("ISSUER:W"), the
// role a cgroup's io.bfq.weight plays for a process in Linux (fio's
// cgroup_weight). Set when the thread starts, dropped when it ends.
#pragma once

#include <string_view>

#include "blkstack/ioprio.h"

namespace blkstack {
class Disk;
}

namespace blkstack::bench {

// Throws Error naming the job unless `disk` has the bfq scheduler: a weight
// nothing would honour is a mistake in the job, not a no-op.
void check_bfq_weight(std::string_view job, Disk& disk);

class IssuerWeight {
 public:
  // `weight` 0: leaves the issuer at bfq's default. Throws as
  // check_bfq_weight.
  IssuerWeight(std::string_view job, Disk& disk, IssuerId issuer, unsigned weight);
  ~IssuerWeight();
  IssuerWeight(const IssuerWeight&) = delete;
  IssuerWeight& operator=(const IssuerWeight&) = delete;

 private:
  Disk& disk_;
  const IssuerId issuer_;
  const bool set_;
};

}  // namespace blkstack::bench
