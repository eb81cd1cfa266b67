#include "verify.h"

#include <fmt/format.h>

#include <cstring>
#include <memory>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "blkstack/error.h"
#include "crc32c.h"

namespace blkstack::bench {
namespace {

constexpr size_t kChecksumAt = offsetof(BlockHeader, checksum);
constexpr uint32_t kSector = 512;

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

BlockHeader load_header(const std::byte* block) {
  BlockHeader h;
  std::memcpy(&h, block, sizeof h);
  return h;
}

}  // namespace

std::string_view verify_algo_name(VerifyAlgo a) {
  switch (a) {
    case VerifyAlgo::kNone:
      return "none";
    case VerifyAlgo::kCrc32c:
      return "crc32c";
    case VerifyAlgo::kXxh64:
      return "xxh64";
  }
  return "?";
}

std::string_view verify_failure_name(VerifyFailure f) {
  switch (f) {
    case VerifyFailure::kNone:
      return "ok";
    case VerifyFailure::kBadMagic:
      return "bad_magic";
    case VerifyFailure::kBadLength:
      return "bad_length";
    case VerifyFailure::kCorrupt:
      return "corrupt";
    case VerifyFailure::kMisplaced:
      return "misplaced";
    case VerifyFailure::kForeign:
      return "foreign";
    case VerifyFailure::kStale:
      return "stale";
    case VerifyFailure::kNewer:
      return "newer";
  }
  return "?";
}

Verifier::Verifier(VerifyAlgo algo, uint32_t block_size, uint64_t seed)
    : algo_(algo), block_size_(block_size), seed_(seed) {
  if (block_size < kMinBlock || block_size % kSector != 0) {
    throw Error(fmt::format("verify block size {} is not a multiple of 512", block_size));
  }
}

uint64_t Verifier::checksum(const std::byte* block) const {
  const std::byte* payload = block + sizeof(BlockHeader);
  const size_t plen = block_size_ - sizeof(BlockHeader);
  if (algo_ == VerifyAlgo::kXxh64) {
    return XXH64(payload, plen, XXH64(block, kChecksumAt, 0));
  }
  return crc32c_extend(crc32c(block, kChecksumAt), payload, plen);
}

void Verifier::fill_payload(std::byte* block, uint64_t offset,
                            uint64_t generation) const {
  uint64_t state =
      seed_ ^ (offset * 0x9e3779b97f4a7c15ull) ^ (generation << 48) ^ generation;
  std::byte* p = block + sizeof(BlockHeader);
  std::byte* end = block + block_size_;
  for (; p + 8 <= end; p += 8) {
    const uint64_t v = splitmix(state);
    std::memcpy(p, &v, 8);
  }
}

void Verifier::stamp(std::byte* block, uint64_t offset, uint64_t generation) const {
  BlockHeader h{};
  h.magic = BlockHeader::kMagic;
  h.offset = offset;
  h.generation = generation;
  h.seed = seed_;
  h.length = block_size_;
  h.algo = static_cast<uint8_t>(algo_);
  std::memcpy(block, &h, sizeof h);
  fill_payload(block, offset, generation);
  h.checksum = checksum(block);
  std::memcpy(block + kChecksumAt, &h.checksum, sizeof h.checksum);
}

std::string Verifier::describe_corruption(const std::byte* block, uint64_t offset,
                                          uint64_t generation) const {
  // Compare with what the block should hold, sector by sector.
  std::unique_ptr<std::byte[]> want(new std::byte[block_size_]);
  stamp(want.get(), offset, generation);
  const uint32_t sectors = block_size_ / kSector;
  uint32_t bad = 0, first_byte = UINT32_MAX;
  for (uint32_t s = 0; s < sectors; ++s) {
    const std::byte* a = block + size_t{s} * kSector;
    const std::byte* b = want.get() + size_t{s} * kSector;
    if (std::memcmp(a, b, kSector) == 0) continue;
    ++bad;
    if (first_byte == UINT32_MAX) {
      for (uint32_t i = 0; i < kSector; ++i) {
        if (a[i] != b[i]) {
          first_byte = s * kSector + i;
          break;
        }
      }
    }
  }
  if (bad == 0) return "";  // only the checksum field itself differs
  return fmt::format(
      "; {} of {} sectors differ from generation {}'s data, first at byte {}", bad,
      sectors, generation, first_byte);
}

VerifyResult Verifier::check(const std::byte* block, uint64_t offset,
                             uint64_t expected_generation) const {
  const BlockHeader h = load_header(block);
  auto fail = [&](VerifyFailure kind, std::string why) {
    return VerifyResult{kind, offset, fmt::format("block at offset {}: {}", offset, why)};
  };
  if (h.magic != BlockHeader::kMagic) {
    return fail(VerifyFailure::kBadMagic,
                fmt::format("bad magic 0x{:016x}, expected 0x{:016x} (never written, or "
                            "overwritten by something else)",
                            h.magic, BlockHeader::kMagic));
  }
  if (h.length != block_size_ || h.algo != static_cast<uint8_t>(algo_)) {
    return fail(VerifyFailure::kBadLength,
                fmt::format("header for a {}-byte {} block, expected {}-byte {} (written "
                            "with other verify settings, or corrupt)",
                            h.length, verify_algo_name(static_cast<VerifyAlgo>(h.algo)),
                            block_size_, verify_algo_name(algo_)));
  }
  const uint64_t sum = checksum(block);
  if (sum != h.checksum) {
    // Describe against the generation the block should have, or the one it
    // claims when we do not know.
    const uint64_t gen = expected_generation ? expected_generation : h.generation;
    return fail(
        VerifyFailure::kCorrupt,
        fmt::format("checksum mismatch (torn/corrupt): stored 0x{:x}, computed 0x{:x}{}",
                    h.checksum, sum, describe_corruption(block, offset, gen)));
  }
  // An intact block: is it the right one?
  if (h.offset != offset) {
    return fail(VerifyFailure::kMisplaced,
                fmt::format("stored offset {} (misplaced)", h.offset));
  }
  if (h.seed != seed_) {
    return fail(VerifyFailure::kForeign,
                fmt::format("seed 0x{:x}, expected 0x{:x} (written by another run)",
                            h.seed, seed_));
  }
  if (expected_generation != 0 && h.generation < expected_generation) {
    return fail(VerifyFailure::kStale, fmt::format("generation {}, expected {} (stale)",
                                                   h.generation, expected_generation));
  }
  if (expected_generation != 0 && h.generation > expected_generation) {
    return fail(VerifyFailure::kNewer,
                fmt::format("generation {}, expected {} (newer than the last write)",
                            h.generation, expected_generation));
  }
  return VerifyResult{VerifyFailure::kNone, offset, {}};
}

}  // namespace blkstack::bench
