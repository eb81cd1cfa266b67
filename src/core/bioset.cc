#include "blkstack/bioset.h"

namespace blkstack {

BioSet::BioSet(std::string name, size_t min_nr, size_t max_nr)
    : pool_(std::move(name), min_nr, max_nr) {}

Bio* BioSet::alloc(Wait wait) {
  PooledBio* p = pool_.alloc(wait);
  if (!p) return nullptr;
  p->pool_ = this;
  p->init(nullptr, Op::kRead, 0, {});
  return p;
}

std::span<Segment> BioSet::inline_segments(Bio& bio) {
  return static_cast<PooledBio&>(bio).inline_segs;
}

void BioSet::release(Bio* bio) { pool_.free(static_cast<PooledBio*>(bio)); }

}  // namespace blkstack
