#include "core/wait.h"

#include "blkstack/debug/submit_context.h"
#include "blkstack/plug.h"

namespace blkstack {

void prepare_to_wait(std::string_view what) {
  debug::check_may_wait(what);
  Plug::flush_current();
}

}  // namespace blkstack
