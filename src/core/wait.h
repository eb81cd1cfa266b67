// What every blocking wait in blkstack does first (schedule() in Linux:
// might_sleep() and blk_flush_plug()): check that the thread is not inside a
// submit path, and send out the requests its plug holds, since the wait may
// be for them.
//
// The plug belongs to the queue layer, above the core: the core only calls
// the hook that layer registers (set_plug_flush_hook), as the scheduler
// calls into the block layer through sched_submit_work() in Linux. Until a
// hook is registered no plug can exist, so there is nothing to flush.
#pragma once

#include <string_view>

namespace blkstack {

void prepare_to_wait(std::string_view what);

// Sends out what the calling thread's plug holds, if it has one.
using PlugFlushHook = void (*)();
// Set once, by the queue layer (src/queue/plug.cc) when it is linked in.
void set_plug_flush_hook(PlugFlushHook hook);

}  // namespace blkstack
