// CompletionThread: completes a TransferDriver's commands on a thread of
// its own, in submission order, each no earlier than its deadline (null_blk's
// softirq and timer completion modes).
//
// Submitters push onto a lock-free stack linked through the commands
// (IoCmd::set_next), the deadline kept in their driver_data; the thread
// takes the whole stack at once, reverses it to FIFO order and completes
// each command when its deadline (a now_ns() time, 0 for "at once") has
// passed. It sleeps on a
// futex only when there is nothing to do, and submitters wake it only when
// it sleeps.
#pragma once

#include <sys/prctl.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "blkstack/driver/transfer.h"
#include "core/clock.h"

namespace blkstack {

class CompletionThread {
 public:
  CompletionThread() : thread_([this] { run(); }) {}
  ~CompletionThread() {
    stop_.store(true, std::memory_order_seq_cst);
    wake();
    thread_.join();
  }
  CompletionThread(const CompletionThread&) = delete;
  CompletionThread& operator=(const CompletionThread&) = delete;

  // Completes `cmd` with Status::kOk at `deadline_ns` (0: at once).
  void push(IoCmd cmd, uint64_t deadline_ns) {
    cmd.driver_data() = deadline_ns;
    IoCmd head = head_.load(std::memory_order_relaxed);
    do {
      cmd.set_next(head);
    } while (!head_.compare_exchange_weak(head, cmd, std::memory_order_seq_cst));
    if (sleeping_.load(std::memory_order_seq_cst)) wake();
  }

 private:
  void wake() {
    seq_.fetch_add(1, std::memory_order_seq_cst);
    seq_.notify_one();
  }

  void run() {
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    for (;;) {
      IoCmd list = head_.exchange(IoCmd(), std::memory_order_acquire);
      if (!list) {
        if (stop_.load(std::memory_order_seq_cst)) return;
        // Dekker with push(): either push() sees sleeping_, or we see its item.
        uint32_t seq = seq_.load(std::memory_order_seq_cst);
        sleeping_.store(true, std::memory_order_seq_cst);
        if (!head_.load(std::memory_order_seq_cst) &&
            !stop_.load(std::memory_order_seq_cst)) {
          seq_.wait(seq, std::memory_order_seq_cst);
        }
        sleeping_.store(false, std::memory_order_relaxed);
        continue;
      }
      IoCmd fifo;  // the stack is newest first
      while (list) {
        const IoCmd next = list.next();
        list.set_next(fifo);
        fifo = list;
        list = next;
      }
      while (fifo) {
        const IoCmd cmd = fifo;
        fifo = fifo.next();
        cmd.set_next(IoCmd());
        wait_until(cmd.driver_data());
        cmd.complete(Status::kOk);
      }
    }
  }

  // Sleeps rather than spins (a spinning completion thread steals the CPU
  // from the submitters on a small machine); the thread's timer slack is
  // 1 ns, so a sleep ends within a few microseconds of when it should.
  static void wait_until(uint64_t deadline) {
    for (uint64_t now = now_ns(); now < deadline; now = now_ns()) {
      uint64_t left = deadline - now;
      if (left > 5'000)
        std::this_thread::sleep_for(std::chrono::nanoseconds(left - 3'000));
    }
  }

  std::atomic<IoCmd> head_{IoCmd()};
  std::atomic<uint32_t> seq_{0};
  std::atomic<bool> sleeping_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace blkstack
