// SoftwareQueue: a submitting thread's staging list of requests, mapped
// onto a hardware queue (the kernel's blk_mq_ctx). Internal to the queue.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "blkstack/driver/hw_queue.h"
#include "blkstack/driver/request.h"

namespace blkstack {

// Cache-line aligned, like HwQueue: each is written by its own thread(s),
// and neighbours sharing a line would bounce it between cores.
struct alignas(64) SoftwareQueue {
  std::mutex lock;
  RequestList list;
  std::atomic<uint32_t> count{0};
  unsigned index = 0;
  HwQueue* hctx = nullptr;
  HwQueue* poll_hctx = nullptr;  // where polled bios go; null without poll queues
};

}  // namespace blkstack
