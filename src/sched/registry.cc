// The list of I/O schedulers: the built-in ones, then those registered at
// run time. A new built-in scheduler adds one line here (and its .cc file
// to CMakeLists.txt); see docs/schedulers.md.
#include <fmt/format.h>

#include <mutex>
#include <vector>

#include "blkstack/driver/scheduler.h"
#include "blkstack/error.h"

namespace blkstack {

namespace {
// "none": no scheduler object at all; the queue dispatches in FIFO order
// and straight to the driver when it is idle.
const SchedulerType kNone{"none", "no scheduling: FIFO, direct dispatch when idle",
                          nullptr};
}  // namespace

extern const SchedulerType kBfqScheduler;         // src/sched/bfq.cc
extern const SchedulerType kKyberScheduler;       // src/sched/kyber.cc
extern const SchedulerType kMqDeadlineScheduler;  // src/sched/mq_deadline.cc

namespace {
struct Registry {
  std::mutex lock;
  // Only grows; readers get copies (registration may reallocate).
  std::vector<const SchedulerType*> types{&kNone, &kMqDeadlineScheduler, &kBfqScheduler,
                                          &kKyberScheduler};
};

// The old single-queue elevators' names, which the kernel kept as aliases
// for a while after blk-mq replaced them (elevator_find's alias).
struct Alias {
  std::string_view old_name, name;
};
constexpr Alias kAliases[] = {
    {"noop", "none"}, {"deadline", "mq-deadline"}, {"cfq", "bfq"}};

Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

void Scheduler::set_tunable(std::string_view name, std::string_view value) {
  (void)value;
  throw Error(fmt::format("this scheduler has no tunable '{}'", name));
}

std::vector<const SchedulerType*> scheduler_types() {
  Registry& r = registry();
  std::lock_guard lock(r.lock);
  return r.types;
}

const SchedulerType& find_scheduler_type(std::string_view name) {
  Registry& r = registry();
  std::lock_guard lock(r.lock);
  std::string_view alias_of;
  for (const Alias& a : kAliases) {
    if (a.old_name == name) alias_of = a.name;
  }
  std::string known;
  for (const SchedulerType* t : r.types) {
    if (t->name == name || t->name == alias_of) return *t;
    known += (known.empty() ? "" : ", ") + std::string(t->name);
  }
  if (!alias_of.empty()) {
    throw Error(
        fmt::format("I/O scheduler '{}' is the old name of '{}', which is not "
                    "available (known: {})",
                    name, alias_of, known));
  }
  throw Error(fmt::format("unknown I/O scheduler '{}' (known: {})", name, known));
}

void register_scheduler_type(const SchedulerType& type) {
  Registry& r = registry();
  std::lock_guard lock(r.lock);
  for (const SchedulerType* t : r.types) {
    if (t->name == type.name) {
      throw Error(fmt::format("I/O scheduler '{}' is registered already", type.name));
    }
  }
  r.types.push_back(&type);
}

}  // namespace blkstack
