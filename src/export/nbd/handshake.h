// Handshake: the NBD option haggling phase (newstyle fixed), as a state
// machine over bytes that does no I/O itself.
//
// The owner feeds it what arrived from the client and sends what it appends
// to output(); that is all. So a connection, a unit test and the fuzz
// target drive the same code. The handshake ends either in transmission
// (done(): an export was chosen with NBD_OPT_EXPORT_NAME or NBD_OPT_GO, see
// result()) or in a disconnect (closed(), with a reason for the log).
//
// What it answers (doc/proto.md, "Option types"):
//   EXPORT_NAME, GO, INFO   the export, with NBD_INFO_BLOCK_SIZE (minimum =
//                           logical block size, preferred = max(physical,
//                           4096), maximum = 32 MiB), NAME and DESCRIPTION
//   LIST                    one NBD_REP_SERVER per export
//   STRUCTURED_REPLY        enables structured replies
//   LIST/SET_META_CONTEXT   base:allocation only
//   ABORT                   ACK, then close
//   STARTTLS                NBD_REP_ERR_POLICY (no TLS yet)
//   anything else           NBD_REP_ERR_UNSUP
// An option whose payload is over kMaxOptionLength (64 KiB) is answered
// NBD_REP_ERR_TOO_BIG and the handshake closes without reading a byte of
// that payload, so a client can make us neither hold nor read more.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "export/export_table.h"

namespace blkstack::nbd {

// What the client and the server agreed on.
struct Negotiated {
  std::shared_ptr<BlockDevice> bdev;  // the export's (Export::bdev)
  std::string export_name;
  uint16_t transmission_flags = 0;
  bool structured_replies = false;
  bool base_allocation = false;    // meta context kBaseAllocationId selected
  bool block_size_agreed = false;  // the client asked for NBD_INFO_BLOCK_SIZE
  bool no_zeroes = false;
  uint32_t min_block = 512;
  uint32_t preferred_block = 4096;
  uint32_t max_block = 0;
};

// The transmission flags we advertise for `bdev`, truthfully.
uint16_t transmission_flags(const BlockDevice& bdev, bool structured_replies);

class Handshake {
 public:
  // Appends the server's greeting to output() at once.
  explicit Handshake(std::shared_ptr<const ExportTable> exports);

  // Consumes bytes from `in` and returns how many. It stops early once the
  // handshake is done (the rest are transmission-phase requests) or closed.
  size_t feed(std::span<const std::byte> in);

  // Bytes to send to the client. The owner sends them and erases what it sent.
  std::string& output() { return out_; }

  bool done() const { return state_ == State::kDone; }
  bool closed() const { return state_ == State::kClosed; }
  // Why the handshake closed: for the log.
  const std::string& close_reason() const { return close_reason_; }
  // Valid once done().
  Negotiated& result() { return result_; }

 private:
  enum class State { kClientFlags, kOptionHeader, kOptionData, kDone, kClosed };

  void close(std::string reason);
  void handle_option();
  void reply(uint32_t type, std::string_view data = {});
  void reply_error(uint32_t type, std::string_view message);
  void option_export_name();
  void option_info(bool go);
  void option_list();
  void option_meta_context(bool set);
  void send_info_export(const Export& e);
  void choose(const Export& e);

  std::shared_ptr<const ExportTable> exports_;
  State state_ = State::kClientFlags;
  std::string in_;              // the bytes of the current item (flags, header, data)
  uint32_t option_ = 0;         // current option
  uint32_t option_length_ = 0;  // kOptionData: the length of the current option
  std::string out_;
  std::string close_reason_;
  bool no_zeroes_ = false;
  bool structured_ = false;
  std::string meta_export_;  // export the meta context was set for
  bool meta_set_ = false;
  Negotiated result_;
};

}  // namespace blkstack::nbd
