// The control protocol of `blkstack serve` (docs/serve.md, "Control
// protocol"): version 1, one JSON object per line over a unix stream socket.
//
//   request:  {"id": <scalar>, "verb": "list", "args": {...}}
//   reply:    {"id": <same>, "result": {...}}
//         or  {"id": <same>, "error": {"code": "not_found", "message": "..."}}
//
// This file is the wire format alone: parsing a request line strictly and
// formatting replies (for the server), and the reverse (for the clients).
// What the verbs do lives with the service (control_verbs.h).
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace blkstack::serve {

inline constexpr int kControlProtocolVersion = 1;
// The longest request line, without its newline; longer ones get "too_long"
// and the connection is closed.
inline constexpr size_t kMaxControlLine = 64 * 1024;
// The deepest nesting of arrays and objects in a request: deeper is refused
// before parsing, so no input makes the parser or the tree deep.
inline constexpr int kMaxControlDepth = 32;

// The error codes of the protocol.
namespace control_code {
inline constexpr const char* kBadRequest = "bad_request";
inline constexpr const char* kTooLong = "too_long";
inline constexpr const char* kUnknownVerb = "unknown_verb";
inline constexpr const char* kNotFound = "not_found";
inline constexpr const char* kInvalidArgument = "invalid_argument";
inline constexpr const char* kBusy = "busy";
inline constexpr const char* kFailed = "failed";
}  // namespace control_code

// An error reply: what a handler throws, and what parsing returns.
class ControlError : public std::runtime_error {
 public:
  ControlError(std::string code, const std::string& message)
      : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

struct ControlRequest {
  nlohmann::json id;    // a scalar (null when the request has none)
  std::string verb;     // non-empty
  nlohmann::json args;  // an object (empty when the request has none)
};

// Parses one request line (without its newline; a trailing '\r' is
// allowed). On error returns it, with `req.id` set when the line got far
// enough to have one (null otherwise), for the error reply.
std::optional<ControlError> parse_control_request(std::string_view line,
                                                  ControlRequest& req);

// One reply line each, newline-terminated. Strings that are not valid UTF-8
// (a handler's message naming a file, say) have the bad bytes replaced.
std::string format_control_result(const nlohmann::json& id, const nlohmann::json& result);
std::string format_control_error(const nlohmann::json& id, const ControlError& error);

// --- the client side ---------------------------------------------------------
std::string format_control_request(const nlohmann::json& id, std::string_view verb,
                                   const nlohmann::json& args);
// A reply line parsed: `error` set for an error reply, `result` otherwise.
// Throws ControlError (bad_request) on a line that is not a reply.
struct ControlReply {
  nlohmann::json id;
  nlohmann::json result;
  std::optional<ControlError> error;
};
ControlReply parse_control_reply(std::string_view line);

}  // namespace blkstack::serve
