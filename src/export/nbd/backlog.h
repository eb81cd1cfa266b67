// Backlog: how much of what we sent a client has yet to read.
//
// An event loop that coalesces (wait_policy.h) must send its next batch of
// replies before its clients run out of replies to read, and not much
// earlier. A unix stream socket tells how much it still holds unread
// (SIOCOUTQ: the memory of whole socket buffers, at least the bytes they
// carry), so a connection sends each batch in two parts and, before the
// next, compares: more than the last part unread, some of the last part
// only, or nothing.
#pragma once

namespace blkstack::nbd {

// Ordered: the loop keeps the least of its clients'.
enum class Backlog {
  kNone,      // everything read: the client is waiting for us
  kLastPart,  // reading the last part of our previous batch of replies
  kMore,      // more than that still unread
};

}  // namespace blkstack::nbd
