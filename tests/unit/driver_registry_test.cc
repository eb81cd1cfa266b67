// Registering driver types at run time (register_driver_type) and loading
// modules (load_module): what a program or module adds is found by name and
// makes disks; a name clash or an unusable name is refused with an error
// naming it, and the registry is unchanged.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "blkstack/disk.h"
#include "blkstack/disk_registry.h"
#include "blkstack/driver/bio_driver.h"
#include "blkstack/driver/driver_type.h"
#include "blkstack/driver/open_context.h"
#include "blkstack/error.h"
#include "blkstack/module.h"
#include "test_util.h"

namespace blkstack {
namespace {
using testing_util::Contains;
using testing_util::ErrorOf;

class CompleteAll final : public BioDriver {
 public:
  void submit(Bio& bio) override { bio.complete(Status::kOk); }
};

constexpr OptionDef kOptions[] = {
    {"size", OptionKind::kSize, "1M", "capacity", {}, true},
};

std::shared_ptr<Disk> create(const DeviceOptions& o, const std::string& name,
                             OpenContext&) {
  return std::make_shared<Disk>(name, o.size("size") >> kSectorShift, QueueLimits{},
                                std::make_unique<CompleteAll>());
}

const DriverType kTestType{"registrytest", "a type registered by a test", 0, kOptions,
                           create};

TEST(DriverRegistryTest, RegisteredTypeMakesDisksAndIsListedAfterTheBuiltins) {
  register_driver_type(kTestType);
  EXPECT_EQ(find_driver_type("registrytest"), &kTestType);
  const auto types = driver_types();
  ASSERT_FALSE(types.empty());
  EXPECT_EQ(types.back(), &kTestType);
  EXPECT_NE(std::find(types.begin(), types.end(), find_driver_type("ram")), types.end());

  DiskRegistry registry;
  auto disk = registry.create("registrytest:2M");
  EXPECT_EQ(disk->name(), "registrytest0");
  EXPECT_EQ(disk->size_bytes(), 2u << 20);

  // The same name again, or a built-in's: refused, and nothing changes.
  const DriverType again{"registrytest", "a clash", 0, kOptions, create};
  const DriverType ram{"ram", "a clash with a built-in", 0, kOptions, create};
  EXPECT_TRUE(Contains(ErrorOf([&] { register_driver_type(again); }),
                       "'registrytest' is already registered"));
  EXPECT_TRUE(Contains(ErrorOf([&] { register_driver_type(ram); }),
                       "'ram' is already registered"));
  EXPECT_EQ(find_driver_type("registrytest"), &kTestType);
  EXPECT_EQ(driver_types().size(), types.size());
}

TEST(DriverRegistryTest, NamesThatASpecCannotSayAreRefused) {
  for (const char* bad : {"", "a:b", "a,b", "a=b", "a b"}) {
    const DriverType t{bad, "bad name", 0, kOptions, create};
    EXPECT_TRUE(Contains(ErrorOf([&] { register_driver_type(t); }), "must be non-empty"))
        << bad;
    EXPECT_EQ(find_driver_type(bad), nullptr) << bad;
  }
  const DriverType no_create{"nocreate", "no create", 0, kOptions, nullptr};
  EXPECT_TRUE(Contains(ErrorOf([&] { register_driver_type(no_create); }),
                       "has no create function"));
  EXPECT_EQ(find_driver_type("nocreate"), nullptr);
}

TEST(DriverRegistryTest, LoadModuleRefusesWhatIsNotAModule) {
  EXPECT_TRUE(Contains(ErrorOf([&] { load_module("/nonexistent/x.so"); }),
                       "module /nonexistent/x.so: cannot load"));
  EXPECT_TRUE(Contains(ErrorOf([&] { load_module("/etc/hostname"); }), "cannot load"));
}

}  // namespace
}  // namespace blkstack
