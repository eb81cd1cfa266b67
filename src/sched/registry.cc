// The list of I/O schedulers. A new scheduler adds one line here (and its
// .cc file to CMakeLists.txt); see docs/schedulers.md.
#include <fmt/format.h>

#include "blkstack/error.h"
#include "blkstack/driver/scheduler.h"

namespace blkstack {

namespace {
// "none": no scheduler object at all; the queue dispatches in FIFO order
// and straight to the driver when it is idle.
const SchedulerType kNone{"none", "no scheduling: FIFO, direct dispatch when idle", nullptr};

const SchedulerType* const kSchedulerTypes[] = {
    &kNone,
};
}  // namespace

void Scheduler::set_tunable(std::string_view name, std::string_view value) {
  (void)value;
  throw Error(fmt::format("this scheduler has no tunable '{}'", name));
}

std::span<const SchedulerType* const> scheduler_types() { return kSchedulerTypes; }

const SchedulerType& find_scheduler_type(std::string_view name) {
  std::string known;
  for (const SchedulerType* t : kSchedulerTypes) {
    if (t->name == name) return *t;
    known += (known.empty() ? "" : ", ") + std::string(t->name);
  }
  throw Error(fmt::format("unknown I/O scheduler '{}' (known: {})", name, known));
}

}  // namespace blkstack
