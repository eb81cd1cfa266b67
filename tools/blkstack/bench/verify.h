// Verify: every block a job writes carries a header saying where it belongs
// and which write it came from, and a checksum over the whole block, so that
// a read can tell apart the ways data goes wrong:
//
//   misplaced  an intact block, but written for another offset
//              ("block at offset X: stored offset Y (misplaced)")
//   stale      an intact block for this offset, but from an older write
//              ("block at offset X: generation G, expected H (stale)")
//   corrupt    the checksum does not match: a torn write or damaged data
//              ("block at offset X: checksum mismatch (torn/corrupt) ...")
//   bad magic  no header at all: never written, or overwritten by others
//   foreign    an intact block from another run (a different seed)
//
// A verify block is `block_size` bytes (the job's smallest block size, or
// verify_interval); an I/O of several blocks stamps and checks each. The
// payload after the header is a pseudo-random pattern derived from (seed,
// offset, generation), so a corrupt block can be compared with what it
// should hold, sector by sector.
//
// This unit knows nothing about I/O: tests stamp a buffer or a RAM disk,
// damage it, and check it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace blkstack::bench {

enum class VerifyAlgo : uint8_t { kNone = 0, kCrc32c = 1, kXxh64 = 2 };

std::string_view verify_algo_name(VerifyAlgo a);

// On-media header, little-endian, at the start of every verify block.
struct BlockHeader {
  static constexpr uint64_t kMagic = 0x3156'6b74'736b'6c62;  // "blkstkV1"
  uint64_t magic;
  uint64_t offset;      // the byte offset on the device this block belongs at
  uint64_t generation;  // 1 for the first write of the block in a run, then 2, 3...
  uint64_t seed;        // the run's verify seed
  uint32_t length;      // the verify block size
  uint8_t algo;         // VerifyAlgo
  uint8_t reserved[3];
  uint64_t checksum;  // over the header before this field and the payload
};
static_assert(sizeof(BlockHeader) == 48);

enum class VerifyFailure : uint8_t {
  kNone = 0,
  kBadMagic,
  kBadLength,  // a header for another block size or algorithm
  kCorrupt,
  kMisplaced,
  kForeign,
  kStale,
  kNewer,  // a generation newer than the last one written: bookkeeping lost
};
inline constexpr int kVerifyFailureKinds = 8;
std::string_view verify_failure_name(VerifyFailure f);  // "misplaced", "stale", ...

struct VerifyResult {
  VerifyFailure kind = VerifyFailure::kNone;
  uint64_t offset = 0;  // where the block was read from
  std::string message;  // "block at offset 8192: stored offset 4096 (misplaced)"
  bool ok() const { return kind == VerifyFailure::kNone; }
};

class Verifier {
 public:
  static constexpr uint32_t kMinBlock = 512;

  // `block_size` must be a multiple of 512 (throws Error otherwise).
  Verifier(VerifyAlgo algo, uint32_t block_size, uint64_t seed);

  VerifyAlgo algo() const { return algo_; }
  uint32_t block_size() const { return block_size_; }
  uint64_t seed() const { return seed_; }

  // Writes the block for `offset`, generation `generation` (>= 1), into
  // `block` (block_size() bytes).
  void stamp(std::byte* block, uint64_t offset, uint64_t generation) const;

  // Checks a block read from `offset`. `expected_generation` 0 means
  // unknown (the block was not written by this run): any generation passes.
  VerifyResult check(const std::byte* block, uint64_t offset,
                     uint64_t expected_generation) const;

  // The checksum of a block as stamp() computes it.
  uint64_t checksum(const std::byte* block) const;

 private:
  void fill_payload(std::byte* block, uint64_t offset, uint64_t generation) const;
  std::string describe_corruption(const std::byte* block, uint64_t offset,
                                  uint64_t generation) const;

  VerifyAlgo algo_;
  uint32_t block_size_;
  uint64_t seed_;
};

}  // namespace blkstack::bench
