// error: fails every read and write with an I/O error (io_err in
// dm-target.c). Arguments, if any, are ignored, as the kernel does.
//
//     start length error
//
// table: nothing. status: nothing. Flushes succeed (it holds no data).
#include "blkstack/driver/target.h"

namespace blkstack {
namespace {

class ErrorTarget final : public Target {
 public:
  ErrorTarget() {
    num_flush_bios = 0;
    num_discard_bios = 1;
    num_write_zeroes_bios = 1;
  }
  MapResult map(Bio&) override { return MapResult::kKill; }
  std::string table() const override { return {}; }
};

std::unique_ptr<Target> create(TargetContext&, TargetArgs) {
  return std::make_unique<ErrorTarget>();
}

}  // namespace

extern const TargetType kErrorTarget{"error", {1, 7, 0}, 0, create};

}  // namespace blkstack
