// What every blocking wait in blkstack does first (schedule() in Linux:
// might_sleep() and blk_flush_plug()): check that the thread is not inside a
// submit path, and send out the requests its plug holds, since the wait may
// be for them.
#pragma once

#include <string_view>

namespace blkstack {

void prepare_to_wait(std::string_view what);

}  // namespace blkstack
