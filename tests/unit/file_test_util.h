// What the file driver's tests share: a scratch directory with the disk
// image's path in it, and reproducible random data.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstddef>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace blkstack {

// A fixture with a fresh directory under /var/tmp (a disk-backed file
// system, unlike /tmp here: O_DIRECT and holes behave as on a real one),
// removed after the test. `path_` is the image's path in it.
class ScratchDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/var/tmp/blkstack-file-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/disk.img";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // `n` random bytes, the same for the same seed.
  static std::vector<std::byte> pattern(size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<std::byte>(rng());
    return v;
  }

  std::string dir_;
  std::string path_;
};

}  // namespace blkstack
