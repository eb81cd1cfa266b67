#include "serve/control_protocol.h"

#include <fmt/format.h>

namespace blkstack::serve {
namespace {

using nlohmann::json;

// The deepest nesting of arrays and objects in `text`, counting brackets
// outside strings; stops counting past `limit`. Cheap and iterative, so a
// line of 64 Ki '[' costs one pass and no recursion.
int nesting_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > deepest && (deepest = depth) > limit) return deepest;
        break;
      case ']':
      case '}':
        --depth;
        break;
      default:
        break;
    }
  }
  return deepest;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace) + '\n';
}

}  // namespace

std::optional<ControlError> parse_control_request(std::string_view line,
                                                  ControlRequest& req) {
  req = ControlRequest{};
  auto bad = [](const std::string& what) {
    return ControlError(control_code::kBadRequest, what);
  };
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.size() > kMaxControlLine) {
    return ControlError(
        control_code::kTooLong,
        fmt::format("request line longer than {} bytes", kMaxControlLine));
  }
  if (nesting_depth(line, kMaxControlDepth) > kMaxControlDepth) {
    return bad(fmt::format("request nested deeper than {} levels", kMaxControlDepth));
  }
  json doc;
  try {
    // Strict: no comments, and the lexer refuses invalid UTF-8 in strings.
    doc = json::parse(line.begin(), line.end());
  } catch (const json::exception& e) {  // parse_error, and out_of_range (1e999)
    return bad(fmt::format("malformed JSON: {}", e.what()));
  }
  if (!doc.is_object()) return bad("a request is a JSON object");
  if (auto it = doc.find("id"); it != doc.end()) {
    if (it->is_structured())
      return bad("\"id\" must be a string, number, boolean or null");
    req.id = std::move(*it);
  }
  auto verb = doc.find("verb");
  if (verb == doc.end()) return bad("missing \"verb\"");
  if (!verb->is_string() || verb->get_ref<const std::string&>().empty()) {
    return bad("\"verb\" must be a non-empty string");
  }
  req.verb = verb->get<std::string>();
  if (auto args = doc.find("args"); args != doc.end() && !args->is_null()) {
    if (!args->is_object()) return bad("\"args\" must be an object");
    req.args = std::move(*args);
  } else {
    req.args = json::object();
  }
  return std::nullopt;
}

std::string format_control_result(const json& id, const json& result) {
  return dump(json{{"id", id}, {"result", result}});
}

std::string format_control_error(const json& id, const ControlError& error) {
  return dump(
      json{{"id", id}, {"error", {{"code", error.code()}, {"message", error.what()}}}});
}

std::string format_control_request(const json& id, std::string_view verb,
                                   const json& args) {
  return dump(json{{"id", id}, {"verb", verb}, {"args", args}});
}

ControlReply parse_control_reply(std::string_view line) {
  ControlReply reply;
  json doc = json::parse(line.begin(), line.end(), nullptr, false);
  if (!doc.is_object()) {
    throw ControlError(control_code::kBadRequest,
                       "the server's reply is not a JSON object");
  }
  if (auto it = doc.find("id"); it != doc.end()) reply.id = *it;
  if (auto err = doc.find("error"); err != doc.end()) {
    const json code = err->is_object() ? err->value("code", json()) : json();
    const json message = err->is_object() ? err->value("message", json()) : json();
    reply.error.emplace(
        code.is_string() ? code.get<std::string>() : control_code::kFailed,
        message.is_string() ? message.get<std::string>() : err->dump());
    return reply;
  }
  auto result = doc.find("result");
  if (result == doc.end()) {
    throw ControlError(control_code::kBadRequest,
                       "the server's reply has neither \"result\" nor \"error\"");
  }
  reply.result = *result;
  return reply;
}

}  // namespace blkstack::serve
