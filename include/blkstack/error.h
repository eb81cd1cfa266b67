// Error: the exception for configuration and setup mistakes (a bad device
// spec, a name clash, an unknown disk). The I/O path never throws; it reports
// a Status on the Bio.
#pragma once

#include <stdexcept>
#include <string>

namespace blkstack {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// The device is in use (EBUSY): claimed by a stacked disk, say. The message
// names the holder.
class BusyError : public Error {
 public:
  using Error::Error;
};

}  // namespace blkstack
