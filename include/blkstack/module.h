// Modules: drivers and schedulers built outside the tree, as shared
// objects, added to a running program (the `blkstack --module` option).
//
// A module is built against the installed headers (pkg-config blkstack)
// and links nothing of blkstack: it uses the library linked into the
// program that loads it, so there is one registry of drivers. Writing one:
// blkstack/driver/module.h and docs/drivers.md.
#pragma once

#include <string>

namespace blkstack {

// Loads the module at `path` and runs its init function, which registers
// what it provides. Throws Error when the file cannot be loaded, is not a
// blkstack module, was built for another version of blkstack, or its init
// fails (a name already taken, say); a module that failed stays loaded
// but registers nothing more. Loading the same file twice is refused.
void load_module(const std::string& path);

}  // namespace blkstack
