// The client side of a running server's control socket, for subcommands
// outside cmd_control.cc (dmsetup).
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace blkstack::cli {

// --control PATH and --json, as every client subcommand takes them.
void add_client_options(CLI::App& cmd, std::string& control, bool& json_out);
// One request: the result, or the error printed as "blkstack CMD: ..." on
// stderr and exit status 1 (CLI::RuntimeError).
nlohmann::json control_call(std::string_view cmd, const std::string& control,
                            std::string_view verb, const nlohmann::json& args);

}  // namespace blkstack::cli
