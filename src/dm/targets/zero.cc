// zero: reads return zeroes, writes are dropped (dm-zero.c); a sparse
// device of any size.
//
//     start length zero
//
// table: nothing. status: nothing.
#include "blkstack/driver/target.h"
#include "blkstack/error.h"

namespace blkstack {
namespace {

class ZeroTarget final : public Target {
 public:
  ZeroTarget() {
    num_flush_bios = 0;
    num_discard_bios = 1;
    num_write_zeroes_bios = 1;
  }
  MapResult map(Bio& clone) override {
    if (clone.op() == Op::kRead) clone.zero_fill();
    clone.complete(Status::kOk);
    return MapResult::kSubmitted;
  }
  std::string table() const override { return {}; }
};

std::unique_ptr<Target> create(TargetContext&, TargetArgs args) {
  if (!args.empty()) throw Error("no arguments required");
  return std::make_unique<ZeroTarget>();
}

}  // namespace

extern const TargetType kZeroTarget{"zero", {1, 2, 0}, 0, create};

}  // namespace blkstack
