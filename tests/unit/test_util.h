// Small helpers the unit tests share: a callback that records a bio's
// completion, and checks on the message of a blkstack::Error.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "blkstack/bio.h"
#include "blkstack/error.h"

namespace blkstack::testing_util {

// Counts callback runs and remembers the status seen by the callback; pass
// record_done as the bio's callback and a Done as its context.
struct Done {
  int calls = 0;
  Status status = Status::kOk;
};
inline void record_done(Bio& bio) {
  auto* d = static_cast<Done*>(bio.context());
  ++d->calls;
  d->status = bio.status();
}

// The message of the blkstack::Error that `fn` throws; a test failure if it
// throws none (or something else).
template <class Fn>
std::string ErrorOf(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a blkstack::Error";
  return {};
}

inline ::testing::AssertionResult Contains(const std::string& text,
                                           std::string_view part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "'" << text << "' does not contain '" << part << "'";
}

// Whether the kernel gives transparent huge pages at all (tests of the ram
// store's huge pages skip without them).
inline bool HaveHugePages() {
  std::FILE* thp = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (!thp) return false;
  char mode[128] = {};
  const bool never = !std::fgets(mode, sizeof mode, thp) || std::strstr(mode, "[never]");
  std::fclose(thp);
  return !never;
}

}  // namespace blkstack::testing_util
