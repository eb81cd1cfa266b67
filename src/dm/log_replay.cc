// replay_log, after xfstests' src/log-writes/replay-log.c: the same
// options, output lines and stop rules, so its scripts read ours.
#include "dm/log_replay.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "blkstack/error.h"
#include "dm/log_reader.h"

namespace blkstack::logwrites {
namespace {

constexpr uint64_t kCopyChunk = 1 << 20;  // bytes moved per read/write

class Fd {
 public:
  Fd(const std::string& path, int flags) : fd_(::open(path.c_str(), flags | O_CLOEXEC)) {
    if (fd_ < 0)
      throw Error(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  }
  ~Fd() { ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Writes the log's entries onto the replay device.
class Replayer {
 public:
  Replayer(int fd, std::string name, uint32_t bs, bool no_discard)
      : fd_(fd), name_(std::move(name)), bs_(bs), no_discard_(no_discard) {
    struct stat st;
    is_blockdev_ = ::fstat(fd_, &st) == 0 && S_ISBLK(st.st_mode);
  }

  void apply(LogReader& log, const Entry& e) {
    const uint64_t offset = e.sector * bs_;
    const uint64_t bytes = e.nr_sectors * bs_;
    if (bytes == 0) return;  // a flush or a mark: nothing to write
    if (e.flags & kDiscard) {
      if (!no_discard_) discard(offset, bytes);
      return;
    }
    buf_.resize(std::min(bytes, kCopyChunk));
    for (uint64_t done = 0; done < bytes;) {
      const uint64_t n = std::min(bytes - done, kCopyChunk);
      log.read_data(buf_.data(), n, done);
      write_at(buf_.data(), n, offset + done);
      done += n;
    }
  }

  void sync() {
    if (::fsync(fd_) != 0)
      throw Error(fmt::format("{}: fsync: {}", name_, std::strerror(errno)));
  }

 private:
  void write_at(const std::byte* p, uint64_t len, uint64_t offset) {
    while (len > 0) {
      const ssize_t n = ::pwrite(fd_, p, len, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        throw Error(fmt::format("{}: write at {}: {}", name_, offset,
                                n < 0 ? std::strerror(errno) : "no space"));
      p += n;
      len -= static_cast<uint64_t>(n);
      offset += static_cast<uint64_t>(n);
    }
  }

  // The range reads as zeroes afterwards: BLKDISCARD where the device
  // zeroes discarded blocks is not known, so as replay-log does on a
  // device without discard, the zeroes are written; a file gets a hole.
  void discard(uint64_t offset, uint64_t len) {
    if (!is_blockdev_ &&
        ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(offset), static_cast<off_t>(len)) == 0)
      return;
    if (is_blockdev_) {
      uint64_t range[2] = {offset, len};
      if (::ioctl(fd_, BLKZEROOUT, range) == 0) return;
    }
    zeroes_.resize(std::min(len, kCopyChunk));
    for (uint64_t done = 0; done < len;) {
      const uint64_t n = std::min(len - done, kCopyChunk);
      write_at(zeroes_.data(), n, offset + done);
      done += n;
    }
  }

  int fd_;
  std::string name_;
  uint32_t bs_;
  bool no_discard_;
  bool is_blockdev_ = false;
  std::vector<std::byte> buf_;
  std::vector<std::byte> zeroes_;
};

// replay-log's should_stop(): the entry has one of `stop_flags`, and if
// they include MARK, it is the mark called `mark`.
bool should_stop(const Entry& e, const std::string& name, uint64_t stop_flags,
                 const std::string& mark) {
  if (!(e.flags & stop_flags)) return false;
  if (!(stop_flags & kMark)) return true;
  return (e.flags & kMark) && name == mark;
}

enum class CheckMode { kNone, kNumber, kFua, kFlush };

struct Check {
  CheckMode mode = CheckMode::kNone;
  uint64_t every = 0;
};

Check parse_check(const std::string& s) {
  if (s.empty()) return {};
  if (s == "flush") return {CheckMode::kFlush, 0};
  if (s == "fua") return {CheckMode::kFua, 0};
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(s.c_str(), &end, 0);
  if (errno || *end != '\0' || n == 0 || s[0] == '-')
    throw Error(
        fmt::format("bad value for --check '{}' (valid: a count from 1, flush, fua)", s));
  return {CheckMode::kNumber, n};
}

void print_entry(std::FILE* out, const char* what, const LogReader& log, const Entry& e) {
  fmt::print(out, "{} {}@{}: sector {}, size {}, flags {:#x}({})\n", what,
             log.next_index() - 1, log.pos_block(), e.sector,
             e.nr_sectors * log.sectorsize(), e.flags, flags_name(e.flags));
}

int run(const ReplayOptions& o, std::FILE* out, std::FILE* err) {
  if (o.log.empty()) throw Error("give the log with --log FILE");
  const Check check = parse_check(o.check);
  if (o.fsck.empty() != (check.mode == CheckMode::kNone))
    throw Error("--fsck and --check go together");
  Fd log_fd(o.log, O_RDONLY);
  LogReader log(log_fd.get(), o.log);
  std::unique_ptr<Fd> replay_fd;
  if (!o.replay.empty()) replay_fd = std::make_unique<Fd>(o.replay, O_WRONLY);

  Entry e;
  std::string mark;
  if (!o.start_mark.empty()) {
    bool found = false;
    while (log.next(e, mark))
      if ((e.flags & kMark) && mark == o.start_mark) {
        found = true;
        break;
      }
    if (!found) throw Error(fmt::format("no mark '{}' in {}", o.start_mark, o.log));
  } else if (o.start_entry > 0) {
    log.seek_entry(o.start_entry);
  }

  uint64_t stop_flags = 0;
  if (o.next_flush) stop_flags |= kFlush;
  if (o.next_fua) stop_flags |= kFua;
  if (!o.end_mark.empty()) stop_flags |= kMark;
  auto stops_here = [&](uint64_t count) {
    return (o.limit && count == o.limit) || should_stop(e, mark, stop_flags, o.end_mark);
  };

  uint64_t count = 0;
  if (o.find) {
    while (log.next(e, mark)) {
      if (o.verbose > 1) print_entry(out, "seek entry", log, e);
      if (stops_here(++count)) {
        fmt::print(out, "{}@{}\n", log.next_index() - 1, log.pos_block());
        return 0;
      }
    }
    fmt::print(err, "Couldn't find entry\n");
    return 1;
  }
  if (o.num_entries) {
    fmt::print(out, "{}\n", log.nr_entries());
    return 0;
  }
  if (!replay_fd) {
    fmt::print(out, "Log version={}, sectorsize={}, entries={}\n", log.super().version,
               log.sectorsize(), log.nr_entries());
    return 0;
  }

  Replayer replayer(replay_fd->get(), o.replay, log.sectorsize(), o.no_discard);
  while (log.next(e, mark)) {
    ++count;
    if (o.verbose) print_entry(out, "replaying", log, e);
    replayer.apply(log, e);
    bool run_fsck = false;
    switch (check.mode) {
      case CheckMode::kNone:
        break;
      case CheckMode::kNumber:
        run_fsck = count % check.every == 0;
        break;
      case CheckMode::kFua:
        run_fsck = (e.flags & kFua) != 0;
        break;
      case CheckMode::kFlush:
        run_fsck = (e.flags & kFlush) != 0;
        break;
    }
    if (run_fsck) {
      replayer.sync();
      std::fflush(out);
      const int rc = std::system(o.fsck.c_str());
      if (rc != 0) {
        fmt::print(err, "Fsck errored out on entry {}\n", log.next_index() - 1);
        return 1;
      }
    }
    if (stops_here(count)) break;
  }
  replayer.sync();
  if (!o.end_mark.empty() && !should_stop(e, mark, kMark, o.end_mark)) {
    fmt::print(err, "no mark '{}' in {}: replayed the whole log\n", o.end_mark, o.log);
    return 1;
  }
  return 0;
}

}  // namespace

int replay_log(const ReplayOptions& o, std::FILE* out, std::FILE* err) {
  try {
    return run(o, out, err);
  } catch (const Error& e) {
    fmt::print(err, "replay-log: {}\n", e.what());
    return 1;
  }
}

}  // namespace blkstack::logwrites
