// Status: the outcome of a block I/O (the kernel's blk_status_t).
//
// A Status is one byte, cheap to pass and to store atomically in a Bio.
// Every value has a stable short name (for logs and tests) and an errno
// (for the asynchronous interface and the NBD export); from_errno() maps
// back so errors coming from the host (io_uring, sockets) keep their meaning.
#pragma once

#include <cstdint>
#include <string_view>

namespace blkstack {

enum class Status : uint8_t {
  kOk = 0,
  kNotSupported,    // EOPNOTSUPP: the device cannot do this operation
  kTimeout,         // ETIMEDOUT
  kNoSpace,         // ENOSPC: the backing store is full
  kTransport,       // ENOLINK: the path to the device failed
  kTarget,          // EREMOTEIO: the remote target failed the command
  kReservation,     // EBADE: reservation conflict
  kMedium,          // ENODATA: unrecoverable medium error
  kProtection,      // EILSEQ: integrity (checksum) failure
  kResource,        // ENOMEM: out of a resource; retried, never surfaced as load
  kIoError,         // EIO: generic I/O error
  kDeviceResource,  // EBUSY: the device (not the host) is out of a resource
  kAgain,           // EAGAIN: would block (NOWAIT I/O)
  kOffline,         // ENODEV: the device is gone or dying
  kInvalid,         // EINVAL: malformed request (misaligned, bad length)
  kOutOfRange,      // ERANGE: beyond the end of the device (blkstack's own)
  kReadOnly,        // EROFS: write to a read-only device (blkstack's own)
  kDurationLimit,   // ETIME: command duration limit exceeded
  kCancelled,       // ECANCELED: cancelled before it reached a device (blkstack's own)
};

inline constexpr int kStatusCount = static_cast<int>(Status::kCancelled) + 1;

// Short lower-case name, e.g. "no-space". Never null.
std::string_view status_name(Status s);

// Positive errno for a status (0 for kOk).
int status_to_errno(Status s);

// Status for a positive or negative errno; unknown values become kIoError.
Status status_from_errno(int err);

// Human-readable sentence for messages: "no space left on the backing store".
std::string_view status_description(Status s);

inline bool ok(Status s) { return s == Status::kOk; }

// Out of room, not broken (DESIGN.md invariant 3): the exports and
// IoContext send such a bio again (resubmit_busy, submit.h) and never
// report these to a client.
inline bool status_is_busy(Status s) {
  return s == Status::kResource || s == Status::kDeviceResource;
}

}  // namespace blkstack
