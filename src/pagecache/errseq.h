// Errseq: an error and a sequence in one word (the kernel's errseq_t,
// lib/errseq.c, Linux >= 4.13): a device records each write-back error;
// every opener keeps a sample and learns of an error recorded since, once.
//
// Layout: bits 0-7 the last error (a Status), bit 8 "seen" (someone
// sampled or reported it: the next error must bump the counter), bits
// 9-31 a counter bumped when an error is recorded after being seen.
#pragma once

#include <atomic>
#include <cstdint>

#include "blkstack/status.h"

namespace blkstack::pagecache {

class Errseq {
 public:
  // errseq_set: records `s` (not kOk).
  void set(Status s);
  // errseq_sample: what a new opener starts from. An error nobody has
  // seen yet is reported to it as well (sample 0), as Linux does.
  uint32_t sample() const;
  // errseq_check_and_advance: the error recorded since `*since`, or kOk;
  // moves `*since` to now and marks the error seen.
  Status check_and_advance(uint32_t* since);

 private:
  static constexpr uint32_t kErrMask = 0xff;
  static constexpr uint32_t kSeen = 1u << 8;
  static constexpr uint32_t kCtrInc = 1u << 9;
  std::atomic<uint32_t> v_{0};
};

}  // namespace blkstack::pagecache
