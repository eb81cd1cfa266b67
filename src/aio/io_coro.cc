#include "blkstack/io_coro.h"

namespace blkstack {

int run_once(IoContext& ctx, unsigned min_nr) {
  IoEvent events[32];
  int n = ctx.get_events(min_nr, events);
  for (int i = 0; i < n; ++i) {
    reinterpret_cast<IoAwaitable*>(events[i].user_data)->complete(events[i].res);
  }
  return n;
}

int64_t SyncIo::run(const Iocb& cb) {
  Iocb local = cb;
  Iocb* list[] = {&local};
  int r = ctx_.submit(list);
  if (r < 0) return r;
  IoEvent ev;
  ctx_.get_events(1, {&ev, 1});
  return ev.res;
}

}  // namespace blkstack
