// Waiting in tests: poll a condition with a deadline instead of sleeping a
// guessed time, and abort (rather than return) when a failed wait would
// leave I/O in flight that points into the test's stack.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace blkstack::testing_util {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Polls `pred` until it holds or `limit` has passed; returns the last value.
template <class Pred>
bool Eventually(Pred&& pred, std::chrono::milliseconds limit = 10s) {
  const auto deadline = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() > deadline) return pred();
    std::this_thread::sleep_for(100us);
  }
  return true;
}

// For waits whose failure leaves I/O in flight that points into the test's
// stack: returning would let a late completion write freed memory, and a
// destructor would wait forever. Report and abort instead (ctest runs each
// case in a process of its own).
template <class Pred>
void MustHappen(Pred&& pred, const char* what, std::chrono::milliseconds limit = 20s) {
  if (Eventually(pred, limit)) return;
  ADD_FAILURE() << "never happened within " << limit.count() << " ms: " << what;
  std::fprintf(stderr, "test: never happened: %s (aborting: I/O is still in flight)\n",
               what);
  std::fflush(nullptr);
  std::abort();
}

}  // namespace blkstack::testing_util
