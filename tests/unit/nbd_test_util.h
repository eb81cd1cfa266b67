// Helpers for the NBD tests: building option and request bytes, and a
// blocking client over one end of a socketpair whose other end a real
// nbd::Server serves.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "export/nbd/protocol.h"

namespace blkstack::nbd::testing {

inline void put16(std::string& s, uint16_t v) {
  char b[2];
  store16(b, v);
  s.append(b, 2);
}
inline void put32(std::string& s, uint32_t v) {
  char b[4];
  store32(b, v);
  s.append(b, 4);
}
inline void put64(std::string& s, uint64_t v) {
  char b[8];
  store64(b, v);
  s.append(b, 8);
}

// IHAVEOPT, option, length, data.
inline std::string option(uint32_t opt, std::string_view data = {}) {
  std::string s;
  put64(s, kIHaveOpt);
  put32(s, opt);
  put32(s, static_cast<uint32_t>(data.size()));
  s.append(data);
  return s;
}

// The payload of NBD_OPT_INFO / NBD_OPT_GO.
inline std::string info_payload(std::string_view name,
                                std::vector<uint16_t> requests = {}) {
  std::string s;
  put32(s, static_cast<uint32_t>(name.size()));
  s.append(name);
  put16(s, static_cast<uint16_t>(requests.size()));
  for (uint16_t r : requests) put16(s, r);
  return s;
}

// The payload of NBD_OPT_LIST/SET_META_CONTEXT.
inline std::string meta_payload(std::string_view name, std::vector<std::string> queries) {
  std::string s;
  put32(s, static_cast<uint32_t>(name.size()));
  s.append(name);
  put32(s, static_cast<uint32_t>(queries.size()));
  for (const auto& q : queries) {
    put32(s, static_cast<uint32_t>(q.size()));
    s += q;
  }
  return s;
}

inline std::string request(uint16_t type, uint64_t cookie, uint64_t offset,
                           uint32_t length, uint16_t flags = 0,
                           uint32_t magic = kRequestMagic) {
  std::string s;
  put32(s, magic);
  put16(s, flags);
  put16(s, type);
  put64(s, cookie);
  put64(s, offset);
  put32(s, length);
  return s;
}

// One option reply, parsed.
struct OptReply {
  uint32_t option = 0;
  uint32_t type = 0;
  std::string data;
};

// Parses the option replies in `bytes` from `*pos`.
inline std::vector<OptReply> parse_replies(std::string_view bytes, size_t* pos) {
  std::vector<OptReply> out;
  while (bytes.size() - *pos >= 20) {
    const char* p = bytes.data() + *pos;
    EXPECT_EQ(load64(p), kOptReplyMagic);
    const uint32_t len = load32(p + 16);
    if (bytes.size() - *pos - 20 < len) break;
    out.push_back({load32(p + 8), load32(p + 12), std::string(p + 20, len)});
    *pos += 20 + len;
  }
  return out;
}

// A reply in the transmission phase: simple, or the chunks of a structured one.
struct Reply {
  bool structured = false;
  uint64_t cookie = 0;
  uint32_t error = 0;
  uint16_t chunk_type = 0;
  std::string payload;  // read data (simple), or the chunk payload
};

// A blocking client on one end of a socketpair.
class Client {
 public:
  explicit Client(int fd) : fd_(fd) {
    timeval tv{10, 0};  // a hung server fails the test instead of hanging it
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  void close() {
    ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }

  void send(std::string_view bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) {
        ADD_FAILURE() << "send failed";
        return;
      }
      off += static_cast<size_t>(n);
    }
  }
  // Exactly n bytes; false on EOF or timeout.
  bool recv(size_t n, std::string* out) {
    out->resize(n);
    size_t off = 0;
    while (off < n) {
      const ssize_t r = ::recv(fd_, out->data() + off, n - off, 0);
      if (r <= 0) return false;
      off += static_cast<size_t>(r);
    }
    return true;
  }
  std::string recv(size_t n) {
    std::string s;
    EXPECT_TRUE(recv(n, &s)) << "short read from the server";
    return s;
  }
  // True when the server closed the connection (EOF) within the timeout.
  bool closed_by_server() {
    char c;
    for (;;) {
      const ssize_t r = ::recv(fd_, &c, 1, 0);
      if (r == 0) return true;
      if (r < 0) return errno == ECONNRESET;
    }
  }

  // Greeting, client flags, optional STRUCTURED_REPLY and base:allocation,
  // then GO. Returns the transmission flags.
  uint16_t negotiate(std::string_view name, bool structured = true, bool meta = true) {
    const std::string greet = recv(18);
    EXPECT_EQ(load64(greet.data()), kNbdMagic);
    std::string s;
    put32(s, kClientFixedNewstyle | kClientNoZeroes);
    send(s);
    if (structured) {
      send(option(kOptStructuredReply));
      EXPECT_EQ(read_opt_reply().type, kRepAck);
      if (meta) {
        send(option(kOptSetMetaContext, meta_payload(name, {kBaseAllocation})));
        EXPECT_EQ(read_opt_reply().type, kRepMetaContext);
        EXPECT_EQ(read_opt_reply().type, kRepAck);
      }
    }
    send(option(kOptGo, info_payload(name, {kInfoBlockSize})));
    uint16_t flags = 0;
    for (;;) {
      OptReply r = read_opt_reply();
      if (r.type == kRepInfo && load16(r.data.data()) == kInfoExport) {
        size_ = load64(r.data.data() + 2);
        flags = load16(r.data.data() + 10);
      }
      if (r.type != kRepInfo) {
        EXPECT_EQ(r.type, kRepAck);
        break;
      }
    }
    structured_ = structured;
    return flags;
  }

  OptReply read_opt_reply() {
    const std::string h = recv(20);
    if (h.size() < 20) return {};
    OptReply r{load32(h.data() + 8), load32(h.data() + 12), {}};
    r.data = recv(load32(h.data() + 16));
    return r;
  }

  // Reads one reply; for a structured one, one chunk. `read_len` is the
  // data length of a simple READ reply (the protocol does not carry it).
  bool read_reply(Reply* r, uint32_t read_len = 0) {
    std::string h;
    if (!recv(4, &h)) return false;
    const uint32_t magic = load32(h.data());
    if (magic == kSimpleReplyMagic) {
      std::string rest;
      if (!recv(12, &rest)) return false;
      r->structured = false;
      r->error = load32(rest.data());
      r->cookie = load64(rest.data() + 4);
      r->payload.clear();
      if (r->error == 0 && read_len) return recv(read_len, &r->payload);
      return true;
    }
    EXPECT_EQ(magic, kStructuredReplyMagic);
    std::string rest;
    if (!recv(16, &rest)) return false;
    r->structured = true;
    r->chunk_type = load16(rest.data() + 2);
    r->cookie = load64(rest.data() + 4);
    const uint32_t len = load32(rest.data() + 12);
    if (!recv(len, &r->payload)) return false;
    r->error = (r->chunk_type & 0x8000) ? load32(r->payload.data()) : 0;
    return true;
  }

  // One request, one reply (for a READ: the data in `*data`).
  uint32_t io(uint16_t type, uint64_t offset, uint32_t length,
              std::string_view payload = {}, uint16_t flags = 0,
              std::string* data = nullptr) {
    const uint64_t cookie = ++cookie_;
    send(request(type, cookie, offset, length, flags) + std::string(payload));
    Reply r;
    if (!read_reply(&r, type == kCmdRead ? length : 0)) {
      ADD_FAILURE() << "no reply";
      return ~0u;
    }
    EXPECT_EQ(r.cookie, cookie);
    if (data) {
      if (r.structured && r.chunk_type == kReplyTypeOffsetData) {
        *data = r.payload.substr(8);
      } else {
        *data = r.payload;
      }
    }
    return r.error;
  }

  uint64_t size() const { return size_; }

 private:
  int fd_;
  uint64_t size_ = 0;
  bool structured_ = false;
  uint64_t cookie_ = 0;
};

}  // namespace blkstack::nbd::testing
