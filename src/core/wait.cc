#include "core/wait.h"

#include <atomic>

#include "blkstack/debug/submit_context.h"

namespace blkstack {
namespace {
// Constant-initialised: set by a static initialiser of the queue layer,
// which may run before or after anything else's.
constinit std::atomic<PlugFlushHook> plug_flush_hook{nullptr};
}  // namespace

void set_plug_flush_hook(PlugFlushHook hook) {
  plug_flush_hook.store(hook, std::memory_order_release);
}

void prepare_to_wait(std::string_view what) {
  debug::check_may_wait(what);
  if (PlugFlushHook flush = plug_flush_hook.load(std::memory_order_acquire)) flush();
}

}  // namespace blkstack
