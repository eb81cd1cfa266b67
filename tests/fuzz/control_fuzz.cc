// Fuzzes the control protocol's parser (src/serve/control_protocol.h) as
// the server feeds it: the input split into lines at '\n', each line
// parsed. Every line must parse or give one of the protocol's error codes;
// a parsed request must hold what the contract says (a scalar id, a
// non-empty verb, an object of args), and the replies formatted for it —
// a result echoing its args, an error quoting the raw line, bad bytes and
// all — must parse back to the same id and content. A crash, an exception
// out of the parser, a sanitizer report or a broken invariant (checked
// with __builtin_trap) is a bug.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "serve/control_protocol.h"

namespace {

using namespace blkstack::serve;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

const std::set<std::string> kCodes = {
    control_code::kBadRequest, control_code::kTooLong,         control_code::kUnknownVerb,
    control_code::kNotFound,   control_code::kInvalidArgument, control_code::kBusy,
    control_code::kFailed};

void one_line(std::string_view line) {
  ControlRequest req;
  std::optional<ControlError> err = parse_control_request(line, req);
  check(!req.id.is_structured());
  if (err) {
    check(kCodes.count(err->code()) == 1);
    const ControlReply back = parse_control_reply(
        format_control_error(req.id, ControlError(err->code(), std::string(line))));
    check(back.error.has_value() && back.error->code() == err->code());
    check(back.id == req.id);
    return;
  }
  check(!req.verb.empty());
  check(req.args.is_object());
  const ControlReply back = parse_control_reply(format_control_result(req.id, req.args));
  check(!back.error.has_value());
  check(back.result == req.args);
  // A number id may come back as another kind of number (1.0 vs 1): compare
  // as JSON text.
  check(back.id.dump() == req.id.dump());
  ControlRequest again;
  const std::string resent = format_control_request(req.id, req.verb, req.args);
  check(!parse_control_request(std::string_view(resent).substr(0, resent.size() - 1),
                               again));
  check(again.verb == req.verb && again.args == req.args);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  while (!input.empty()) {
    const size_t nl = input.find('\n');
    one_line(input.substr(0, nl));
    if (nl == std::string_view::npos) break;
    input.remove_prefix(nl + 1);
  }
  return 0;
}
