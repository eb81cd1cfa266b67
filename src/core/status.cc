#include "blkstack/status.h"

#include <array>
#include <cerrno>

namespace blkstack {
namespace {

struct StatusInfo {
  std::string_view name;
  int err;
  std::string_view description;
};

// Indexed by Status; the order must match the enum (checked below).
constexpr std::array<StatusInfo, kStatusCount> kInfo = {{
    {"ok", 0, "success"},
    {"not-supported", EOPNOTSUPP, "operation not supported by the device"},
    {"timeout", ETIMEDOUT, "I/O timed out"},
    {"no-space", ENOSPC, "no space left on the backing store"},
    {"transport", ENOLINK, "transport to the device failed"},
    {"target", EREMOTEIO, "the target failed the request"},
    {"reservation", EBADE, "reservation conflict"},
    {"medium", ENODATA, "unrecoverable medium error"},
    {"protection", EILSEQ, "data integrity (protection) error"},
    {"resource", ENOMEM, "out of a host resource"},
    {"io-error", EIO, "I/O error"},
    {"device-resource", EBUSY, "device is out of a resource"},
    {"again", EAGAIN, "operation would block"},
    {"offline", ENODEV, "no such device (offline or removed)"},
    {"invalid", EINVAL, "invalid request (misaligned or malformed)"},
    {"out-of-range", ERANGE, "request goes beyond the end of the device"},
    {"read-only", EROFS, "device is read-only"},
    {"duration-limit", ETIME, "command duration limit exceeded"},
    {"cancelled", ECANCELED, "cancelled before it reached a device"},
}};

static_assert(kInfo[static_cast<int>(Status::kDurationLimit)].err == ETIME);
static_assert(kInfo[static_cast<int>(Status::kCancelled)].err == ECANCELED);
static_assert(kInfo[static_cast<int>(Status::kReadOnly)].err == EROFS);

const StatusInfo& info(Status s) {
  auto i = static_cast<unsigned>(s);
  return i < kInfo.size() ? kInfo[i] : kInfo[static_cast<int>(Status::kIoError)];
}

}  // namespace

std::string_view status_name(Status s) { return info(s).name; }
int status_to_errno(Status s) { return info(s).err; }
std::string_view status_description(Status s) { return info(s).description; }

Status status_from_errno(int err) {
  if (err < 0) err = -err;
  if (err == 0) return Status::kOk;
  for (int i = 1; i < kStatusCount; ++i) {
    if (kInfo[i].err == err) return static_cast<Status>(i);
  }
  switch (err) {  // errnos the host uses for the same conditions
    case ENOTSUP == EOPNOTSUPP ? -1:
    ENOTSUP:
      return Status::kNotSupported;
    case EDQUOT:
    case EFBIG:
      return Status::kNoSpace;
    case ECONNRESET:
    case EPIPE:
    case ECONNREFUSED:
    case ENOTCONN:
    case ESHUTDOWN:
      return Status::kTransport;
    case ENXIO:
    case ENOENT:
    case ESTALE:
      return Status::kOffline;
    case EPERM:
    case EACCES:
      return Status::kReadOnly;
    case EOVERFLOW:
      return Status::kOutOfRange;
    default:
      return Status::kIoError;
  }
}

}  // namespace blkstack
