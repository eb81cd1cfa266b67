// The one lock over all claims (the kernel's bdev_lock), taken before a
// disk's parts_lock_: claims change rarely and never on the I/O path. A
// rescan takes it too, so that no claim check walks partitions it is
// replacing. Internal.
#pragma once

#include <mutex>

namespace blkstack {

std::mutex& claim_lock();

}  // namespace blkstack
