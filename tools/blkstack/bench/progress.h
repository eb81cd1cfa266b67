// The live progress line, fio's "Jobs: 1 (f=1): [r(1)][45.0%][r=4102MiB/s]
// [r=1050k IOPS][eta 00m:06s]" plus the elapsed time, redrawn in place
// with '\r' about twice a second while the output is a terminal.
#pragma once

#include <cstdio>
#include <string>

#include "runner.h"

namespace blkstack::bench {

std::string format_progress(const ProgressSnapshot& s);

class TerminalProgress : public ProgressSink {
 public:
  explicit TerminalProgress(FILE* out) : out_(out) {}
  void update(const ProgressSnapshot& s) override;
  void finish() override;

 private:
  FILE* out_;
  bool drawn_ = false;
};

}  // namespace blkstack::bench
