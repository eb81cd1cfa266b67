// Backlog: how much of what we sent a client has yet to read.
//
// An event loop that coalesces (wait_policy.h) must send its next batch of
// replies before its clients run out of replies to read, and not much
// earlier. A unix stream socket tells how many bytes sent are still unread
// (SIOCOUTQ, in whole socket buffers), so a connection sends each batch in
// two parts and, before the next, compares: more than the last part
// unread, some of the last part only, or nothing.
#pragma once

namespace blkstack::nbd {

// Ordered: the loop keeps the least of its clients'.
enum class Backlog {
  kNone,      // everything read: the client is waiting for us
  kLastPart,  // reading the last part of our previous batch of replies
  kMore,      // more than that still unread
};

}  // namespace blkstack::nbd
