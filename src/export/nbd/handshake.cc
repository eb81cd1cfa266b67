#include "export/nbd/handshake.h"

#include <fmt/format.h>

#include <algorithm>

#include "blkstack/disk.h"
#include "export/nbd/protocol.h"

namespace blkstack::nbd {
namespace {

constexpr size_t kOptionHeaderSize = 16;  // IHAVEOPT, option, length

void put16(std::string& s, uint16_t v) {
  char b[2];
  store16(b, v);
  s.append(b, 2);
}
void put32(std::string& s, uint32_t v) {
  char b[4];
  store32(b, v);
  s.append(b, 4);
}
void put64(std::string& s, uint64_t v) {
  char b[8];
  store64(b, v);
  s.append(b, 8);
}

// Reads a length-prefixed string at `*pos`; false when it does not fit.
bool read_string(std::string_view data, size_t* pos, std::string_view* out) {
  if (data.size() - *pos < 4) return false;
  const uint32_t len = load32(data.data() + *pos);
  *pos += 4;
  if (len > kMaxStringLength || data.size() - *pos < len) return false;
  *out = data.substr(*pos, len);
  *pos += len;
  return true;
}

}  // namespace

uint16_t transmission_flags(const BlockDevice& bdev, bool structured_replies) {
  const QueueLimits& l = bdev.disk().limits();  // a partition's are its disk's
  uint16_t f = kFlagHasFlags | kFlagSendFlush | kFlagSendCache;
  if (bdev.read_only()) {
    // Nothing that writes: a client need not wonder whether TRIM or FUA
    // would work on an export that refuses every write.
    f |= kFlagReadOnly;
  } else {
    f |= kFlagSendFua | kFlagSendWriteZeroes | kFlagSendFastZero;
    if (l.max_discard_sectors != 0) f |= kFlagSendTrim;
  }
  // DF only means something when reads can be split into chunks.
  if (structured_replies) f |= kFlagSendDf;
  // Every blkstack device completes a flush after all writes completed
  // before it, whichever connection sent them: one device, one cache.
  f |= kFlagCanMultiConn;
  return f;
}

Handshake::Handshake(std::shared_ptr<const ExportTable> exports)
    : exports_(std::move(exports)) {
  put64(out_, kNbdMagic);
  put64(out_, kIHaveOpt);
  put16(out_, kFlagFixedNewstyle | kFlagNoZeroes);
}

void Handshake::close(std::string reason) {
  state_ = State::kClosed;
  close_reason_ = std::move(reason);
}

size_t Handshake::feed(std::span<const std::byte> in) {
  size_t used = 0;
  auto take = [&](size_t want) {  // tops in_ up to `want` bytes; true when full
    const size_t n = std::min(want - in_.size(), in.size() - used);
    in_.append(reinterpret_cast<const char*>(in.data() + used), n);
    used += n;
    return in_.size() == want;
  };
  while (used < in.size() ||
         (state_ == State::kOptionData && in_.size() == option_length_)) {
    switch (state_) {
      case State::kClientFlags: {
        if (!take(4)) return used;
        const uint32_t flags = load32(in_.data());
        in_.clear();
        if (flags & ~(kClientFixedNewstyle | kClientNoZeroes)) {
          close(fmt::format("unknown client flags {:#x}", flags));
          return used;
        }
        no_zeroes_ = flags & kClientNoZeroes;
        state_ = State::kOptionHeader;
        break;
      }
      case State::kOptionHeader: {
        if (!take(kOptionHeaderSize)) return used;
        const uint64_t magic = load64(in_.data());
        option_ = load32(in_.data() + 8);
        const uint32_t length = load32(in_.data() + 12);
        in_.clear();
        if (magic != kIHaveOpt) {
          close(fmt::format("bad option magic {:#x}", magic));
          return used;
        }
        if (length > kMaxOptionLength) {
          // Skipping the payload would let a client that announces 4 GiB
          // keep us reading for as long as it likes; the spec allows TOO_BIG
          // and a disconnect, which is what nbdkit does too. EXPORT_NAME
          // has no error reply (the client would read ours as the export's
          // size and flags): it is only closed.
          if (option_ != kOptExportName) {
            reply_error(
                kRepErrTooBig,
                fmt::format("option payload of {} bytes is over the {} byte limit",
                            length, kMaxOptionLength));
          }
          close(fmt::format("option {} of {} bytes is over the {} byte limit", option_,
                            length, kMaxOptionLength));
          return used;
        }
        option_length_ = length;
        state_ = State::kOptionData;
        break;
      }
      case State::kOptionData:
        if (!take(option_length_)) return used;
        handle_option();
        in_.clear();
        if (state_ == State::kOptionData) state_ = State::kOptionHeader;
        break;
      case State::kDone:
      case State::kClosed:
        return used;
    }
  }
  return used;
}

void Handshake::reply(uint32_t type, std::string_view data) {
  put64(out_, kOptReplyMagic);
  put32(out_, option_);
  put32(out_, type);
  put32(out_, static_cast<uint32_t>(data.size()));
  out_.append(data);
}

void Handshake::reply_error(uint32_t type, std::string_view message) {
  reply(type, message);
}

void Handshake::handle_option() {
  switch (option_) {
    case kOptExportName:
      return option_export_name();
    case kOptAbort:
      reply(kRepAck);
      return close("client sent NBD_OPT_ABORT");
    case kOptList:
      return option_list();
    case kOptStartTls:
      return reply_error(kRepErrPolicy, "TLS is not supported by this server");
    case kOptInfo:
      return option_info(false);
    case kOptGo:
      return option_info(true);
    case kOptStructuredReply:
      if (!in_.empty())
        return reply_error(kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY has no payload");
      structured_ = true;
      return reply(kRepAck);
    case kOptListMetaContext:
      return option_meta_context(false);
    case kOptSetMetaContext:
      return option_meta_context(true);
    default:
      return reply_error(kRepErrUnsup,
                         fmt::format("option {} is not supported", option_));
  }
}

void Handshake::choose(const Export& e) {
  result_.bdev = e.bdev;
  result_.export_name = e.name;
  result_.structured_replies = structured_;
  result_.transmission_flags = transmission_flags(*e.bdev, structured_);
  result_.base_allocation = structured_ && meta_set_ && meta_export_ == e.name;
  result_.no_zeroes = no_zeroes_;
  const QueueLimits& l = e.bdev->disk().limits();
  result_.min_block = l.logical_block_size;
  result_.preferred_block = std::max<uint32_t>(l.physical_block_size, 4096);
  result_.max_block = kMaxPayload;
  state_ = State::kDone;
}

void Handshake::option_export_name() {
  const Export* e = exports_->find(in_);
  if (!e) return close(fmt::format("NBD_OPT_EXPORT_NAME: no export '{:.64}'", in_));
  // Old-style ending: size and flags, no option reply. Meta contexts need
  // GO, so none is active here.
  meta_set_ = false;
  choose(*e);
  put64(out_, e->bdev->size_bytes());
  put16(out_, result_.transmission_flags);
  if (!no_zeroes_) out_.append(124, '\0');
}

void Handshake::send_info_export(const Export& e) {
  std::string d;
  put16(d, kInfoExport);
  put64(d, e.bdev->size_bytes());
  put16(d, transmission_flags(*e.bdev, structured_));
  reply(kRepInfo, d);
}

void Handshake::option_info(bool go) {
  const std::string_view data = in_;
  size_t pos = 0;
  std::string_view name;
  if (!read_string(data, &pos, &name) || data.size() - pos < 2) {
    return reply_error(kRepErrInvalid, "malformed NBD_OPT_INFO/GO payload");
  }
  const uint16_t n = load16(data.data() + pos);
  pos += 2;
  if (data.size() - pos != size_t{n} * 2) {
    return reply_error(kRepErrInvalid,
                       "NBD_OPT_INFO/GO: information request count mismatch");
  }
  const Export* e = exports_->find(name);
  if (!e) return reply_error(kRepErrUnknown, fmt::format("no export '{:.64}'", name));
  bool want_name = false, want_description = false, want_block_size = false;
  for (uint16_t i = 0; i < n; ++i) {
    switch (load16(data.data() + pos + 2 * i)) {
      case kInfoName:
        want_name = true;
        break;
      case kInfoDescription:
        want_description = true;
        break;
      case kInfoBlockSize:
        want_block_size = true;
        break;
      default:
        break;  // unknown requests are ignored, as the spec says
    }
  }
  send_info_export(*e);
  if (want_name) {
    std::string d;
    put16(d, kInfoName);
    d += e->name;
    reply(kRepInfo, d);
  }
  if (want_description && !e->description.empty()) {
    std::string d;
    put16(d, kInfoDescription);
    d += e->description;
    reply(kRepInfo, d);
  }
  // Always sent: the constraints hold whether or not the client asked, and
  // clients that did not ask still use them to size requests.
  {
    const QueueLimits& l = e->bdev->disk().limits();
    std::string d;
    put16(d, kInfoBlockSize);
    put32(d, l.logical_block_size);
    put32(d, std::max<uint32_t>(l.physical_block_size, 4096));
    put32(d, kMaxPayload);
    reply(kRepInfo, d);
  }
  reply(kRepAck);
  if (go) {
    choose(*e);
    result_.block_size_agreed = want_block_size;
  }
}

void Handshake::option_list() {
  if (!in_.empty()) return reply_error(kRepErrInvalid, "NBD_OPT_LIST has no payload");
  for (const Export& e : exports_->list()) {
    std::string d;
    put32(d, static_cast<uint32_t>(e.name.size()));
    d += e.name;
    d += e.description;
    reply(kRepServer, d);
  }
  reply(kRepAck);
}

void Handshake::option_meta_context(bool set) {
  const std::string_view data = in_;
  size_t pos = 0;
  std::string_view name;
  if (!read_string(data, &pos, &name) || data.size() - pos < 4) {
    return reply_error(kRepErrInvalid, "malformed meta context payload");
  }
  const uint32_t nr = load32(data.data() + pos);
  pos += 4;
  std::vector<std::string_view> queries;
  for (uint32_t i = 0; i < nr; ++i) {
    std::string_view q;
    if (!read_string(data, &pos, &q))
      return reply_error(kRepErrInvalid, "malformed meta context query");
    queries.push_back(q);
  }
  if (pos != data.size())
    return reply_error(kRepErrInvalid, "trailing bytes in meta context payload");
  if (set && !structured_) {
    return reply_error(kRepErrInvalid,
                       "NBD_OPT_SET_META_CONTEXT needs structured replies first");
  }
  const Export* e = exports_->find(name);
  if (!e) return reply_error(kRepErrUnknown, fmt::format("no export '{:.64}'", name));
  bool match = false;
  if (set) {
    for (std::string_view q : queries) match |= q == kBaseAllocation;
    meta_set_ = match;
    meta_export_ = e->name;
  } else {
    // LIST with no query lists everything; "base:" names the namespace.
    match = queries.empty();
    for (std::string_view q : queries) match |= q == kBaseAllocation || q == "base:";
  }
  if (match) {
    std::string d;
    put32(d, set ? kBaseAllocationId : 0);
    d += kBaseAllocation;
    reply(kRepMetaContext, d);
  }
  reply(kRepAck);
}

}  // namespace blkstack::nbd
