// What the durability tests (durability_*_test.cc, and the kill harness in
// tests/integration/durability_kill.cc) share: sector stamps and the record
// of what was acknowledged as durable.
//
// Every 512-byte sector a test writes holds a stamp: its own sector number,
// the id of the write that wrote it, bytes derived from both, and a
// checksum over the rest. A sector read back is then exactly one whole
// version (a known write's, or never written: all zeroes), or torn.
//
// DurabilityModel records, per sector, the newest write submitted and the
// newest one acknowledged as durable: a FUA write once it completed, and
// every write that completed before a flush was sent, once that flush
// completed (the kernel's rule, Documentation/block/writeback_cache_control).
// check() holds an image to that: every sector a valid stamp of its own
// number, no older than the durable floor, no newer than what was sent.
// Writes to one sector must not overlap in time (the workloads give each
// thread its own sectors), so ids per sector grow with time.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace blkstack::durability {

inline constexpr uint64_t kSector = 512;

// Built with a sanitizer (the ASan run of make test): the default counts
// of the long-running tests are cut to keep them quick there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif
inline constexpr uint64_t kStampMagic = 0x424c4b4455524142;  // "BLKDURAB"

inline uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}

// Over whole 64-bit words (n a multiple of 8): FNV-1a's step per word.
inline uint64_t checksum(const std::byte* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3;
    h ^= h >> 29;
  }
  return h;
}

// Writes the stamp of (sector, id) into the 512 bytes at `p`.
inline void stamp(std::byte* p, uint64_t sector, uint64_t id) {
  uint64_t words[kSector / 8];
  words[0] = kStampMagic;
  words[1] = sector;
  words[2] = id;
  for (size_t i = 3; i < kSector / 8 - 1; ++i) words[i] = mix(sector * 1000003 + id + i);
  std::memcpy(p, words, kSector - 8);
  const uint64_t sum = checksum(p, kSector - 8);
  std::memcpy(p + kSector - 8, &sum, 8);
}

// The write id a sector holds: 0 if all zeroes (never written), nothing if
// it is not one whole stamp of `sector` (torn, or someone else's).
inline std::optional<uint64_t> stamp_id(const std::byte* p, uint64_t sector) {
  if (std::all_of(p, p + kSector, [](std::byte b) { return b == std::byte{0}; }))
    return 0;
  uint64_t words[kSector / 8];
  std::memcpy(words, p, kSector);
  if (words[0] != kStampMagic || words[1] != sector) return std::nullopt;
  if (checksum(p, kSector - 8) != words[kSector / 8 - 1]) return std::nullopt;
  return words[2];
}

class DurabilityModel {
 public:
  explicit DurabilityModel(uint64_t sectors)
      : floor_(sectors, 0), acked_(sectors, 0), sent_(sectors, 0) {}

  uint64_t sectors() const { return floor_.size(); }

  // A write of sectors [first, first + n) is about to be sent: its id.
  uint64_t begin_write(uint64_t first, uint64_t n) {
    std::lock_guard l(mu_);
    const uint64_t id = ++next_id_;
    for (uint64_t s = first; s < first + n; ++s) sent_[s] = id;
    return id;
  }
  // It completed successfully; with FUA it is durable now.
  void write_acked(uint64_t first, uint64_t n, uint64_t id, bool fua) {
    std::lock_guard l(mu_);
    for (uint64_t s = first; s < first + n; ++s) {
      acked_[s] = std::max(acked_[s], id);
      if (fua) floor_[s] = std::max(floor_[s], id);
    }
    if (!fua) unflushed_.push_back({first, n, id});
  }
  // A flush is about to be sent: it covers every write acked so far.
  size_t begin_flush() {
    std::lock_guard l(mu_);
    return flushed_base_ + unflushed_.size();
  }
  // That flush completed successfully.
  void flush_acked(size_t covers) {
    std::lock_guard l(mu_);
    while (flushed_base_ < covers && !unflushed_.empty()) {
      const Ack& a = unflushed_.front();
      for (uint64_t s = a.first; s < a.first + a.n; ++s)
        floor_[s] = std::max(floor_[s], a.id);
      unflushed_.pop_front();
      ++flushed_base_;
    }
    ++flushes_;
  }

  // Checks `image` (sectors() * 512 bytes). `acked_is_floor`: every acked
  // write must be there, durable or not (the server was killed, the host
  // kept its page cache). Empty if it holds; else the first problems.
  std::string check(const std::byte* image, bool acked_is_floor) const {
    std::lock_guard l(mu_);
    std::string out;
    int problems = 0;
    for (uint64_t s = 0; s < floor_.size() && problems < 5; ++s) {
      const std::optional<uint64_t> id = stamp_id(image + s * kSector, s);
      const uint64_t floor = acked_is_floor ? std::max(floor_[s], acked_[s]) : floor_[s];
      std::string bad;
      if (!id)
        bad = "is not one whole version (torn or misplaced)";
      else if (*id < floor)
        bad = "holds write " + std::to_string(*id) + ", older than write " +
              std::to_string(floor) +
              (floor == floor_[s] ? " acknowledged as durable" : " acknowledged");
      else if (*id > sent_[s])
        bad = "holds write " + std::to_string(*id) + ", never sent there";
      if (bad.empty()) continue;
      ++problems;
      out += "sector " + std::to_string(s) + " " + bad + "\n";
    }
    return out;
  }

  // After a check passed: the image is the new starting point.
  void restart_from(const std::byte* image) {
    std::lock_guard l(mu_);
    for (uint64_t s = 0; s < floor_.size(); ++s) {
      const uint64_t id = stamp_id(image + s * kSector, s).value_or(0);
      floor_[s] = acked_[s] = sent_[s] = id;
    }
    unflushed_.clear();
    flushed_base_ = 0;
  }

  uint64_t writes() const {
    std::lock_guard l(mu_);
    return next_id_;
  }
  uint64_t flushes() const {
    std::lock_guard l(mu_);
    return flushes_;
  }

 private:
  struct Ack {
    uint64_t first, n, id;
  };
  mutable std::mutex mu_;
  std::vector<uint64_t> floor_;  // newest write acknowledged as durable
  std::vector<uint64_t> acked_;  // newest write acknowledged
  std::vector<uint64_t> sent_;   // newest write sent
  std::deque<Ack> unflushed_;    // acked, not FUA, no flush since
  size_t flushed_base_ = 0;      // acks covered by flushes before unflushed_[0]
  uint64_t next_id_ = 0;
  uint64_t flushes_ = 0;
};

}  // namespace blkstack::durability
