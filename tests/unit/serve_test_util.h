// Helpers for the serve service tests: a scratch directory with a config
// file that a test rewrites between reloads, and a verified NBD workload.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "nbd_test_util.h"

namespace blkstack::testing_util {

class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "blkstack-serve-XXXXXX");
    if (!mkdtemp(tmpl.data())) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string path(const std::string& name) const { return path_ + "/" + name; }
  // Writes `text` to `name` (replacing it) and returns the path.
  std::string write(const std::string& name, const std::string& text) const {
    const std::string p = path(name);
    std::ofstream(p) << text;
    return p;
  }

 private:
  std::string path_;
};

// A verified workload: write a block, read it back, compare; until told to
// stop. Counts the requests that failed or read back wrong.
class Workload {
 public:
  explicit Workload(std::unique_ptr<nbd::testing::Client> c) : c_(std::move(c)) {
    thread_ = std::thread([this] { run(); });
  }
  ~Workload() { finish(); }
  void finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint64_t rounds() const { return rounds_.load(); }
  uint64_t errors() const { return errors_.load(); }
  nbd::testing::Client& client() { return *c_; }
  // Waits until at least `n` more rounds are done.
  void await_rounds(uint64_t n) {
    const uint64_t until = rounds() + n;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (rounds() < until && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

 private:
  void run() {
    for (uint32_t i = 0; !stop_; ++i) {
      const uint64_t off = uint64_t{i % 256} * 4096;
      std::string data(4096, 0);
      for (size_t k = 0; k < data.size(); ++k)
        data[k] = static_cast<char>(i * 31 + k * 7);
      std::string back;
      if (c_->io(nbd::kCmdWrite, off, 4096, data) != 0 ||
          c_->io(nbd::kCmdRead, off, 4096, {}, 0, &back) != 0 || back != data) {
        errors_.fetch_add(1);
        return;  // the connection is off the rails: say so, stop
      }
      rounds_.fetch_add(1);
    }
  }
  std::unique_ptr<nbd::testing::Client> c_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> rounds_{0};
  std::atomic<uint64_t> errors_{0};
};

}  // namespace blkstack::testing_util
