// replay_log: xfstests' replay-log over a log-writes log. It replays the
// log's writes, in order, onto a device or file up to an entry, a mark, a
// flush or a FUA write, so that the device holds exactly what the logged
// device held at that point; or it finds such a point, or prints the log.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace blkstack::logwrites {

struct ReplayOptions {
  std::string log;           // --log: the log (a file or block device)
  std::string replay;        // --replay: where to write; empty: print the log's info
  uint64_t limit = 0;        // --limit: replay at most this many entries (0: all)
  uint64_t start_entry = 0;  // --start-entry
  std::string start_mark;    // --start-mark: start after this mark
  std::string end_mark;      // --end-mark: stop after this mark
  bool next_flush = false;   // --next-flush: stop after the next flush
  bool next_fua = false;     // --next-fua: stop after the next FUA write
  bool find = false;         // --find: print ENTRY@BLOCK of the stop point
  bool num_entries = false;  // --num-entries: print the entry count
  bool no_discard = false;   // --no-discard: skip discard entries
  std::string fsck;          // --fsck: a command run at --check points
  std::string check;         // --check: N (every N entries), flush or fua
  int verbose = 0;           // -v: replayed entries, -vv: skipped too
};

// Runs it; messages go to `out` and `err`. Returns the exit status: 0, or
// 1 after an error (said on `err`), a failed fsck, or a stop point that
// --find did not find.
int replay_log(const ReplayOptions& o, std::FILE* out, std::FILE* err);

}  // namespace blkstack::logwrites
