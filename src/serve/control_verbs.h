// The verbs of the control protocol (docs/serve.md, "Control protocol")
// over a running Service: hello, list, describe, add-device, remove-device,
// add-export, remove-export, stats, attributes, get, set and reload; and
// dmsetup's verbs for mapped devices: dm-create, dm-load, dm-clear,
// dm-suspend, dm-resume, dm-remove, dm-table, dm-status, dm-info,
// dm-message, dm-targets.
//
// Each verb checks its arguments (a missing or mistyped one, or one it does
// not know, is "bad_request") and maps the service's exceptions onto the
// protocol's codes: NotFoundError -> "not_found", BusyError -> "busy",
// ConfigError -> "invalid_argument", any other Error -> "failed". Later
// capabilities add their verbs to the table in control_verbs.cc.
#pragma once

#include <string>
#include <vector>

#include "serve/control_server.h"

namespace blkstack {
class Service;
}

namespace blkstack::serve {

// The handler a ControlServer runs for `service`, which must outlive it.
ControlHandler make_control_handler(Service& service);
// The verbs it answers, as hello lists them.
std::vector<std::string> control_verbs();

}  // namespace blkstack::serve
