// load_module: dlopen, check the version the module was built for, run its
// init function.
#include <dlfcn.h>
#include <fmt/format.h>

#include <cstring>
#include <mutex>
#include <set>
#include <string>

#include "blkstack/error.h"
#include "blkstack/module.h"
#include "blkstack/version.h"

namespace blkstack {

namespace {
std::mutex loaded_mu;
std::set<void*> loaded;  // dlopen handles of modules whose init ran
}  // namespace

void load_module(const std::string& path) {
  // A bare name would make dlopen search the library path; a module is
  // named by its file, as `blkstack --module ./x.so` reads.
  const std::string file = path.find('/') == std::string::npos ? "./" + path : path;
  // RTLD_NOW: an undefined symbol (a module built against a newer API) is
  // an error here, not a crash in the middle of I/O. RTLD_LOCAL: two
  // modules' own symbols do not collide.
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr)
    throw Error(fmt::format("module {}: cannot load: {}", path, dlerror()));
  const auto* version =
      static_cast<const char*>(dlsym(handle, "blkstack_module_version"));
  auto* init = reinterpret_cast<void (*)()>(dlsym(handle, "blkstack_module_init"));
  if (version == nullptr || init == nullptr) {
    dlclose(handle);
    throw Error(fmt::format(
        "module {}: not a blkstack module (no BLKSTACK_MODULE_INIT; see docs/drivers.md)",
        path));
  }
  if (std::strcmp(version, BLKSTACK_VERSION_STRING) != 0) {
    const std::string built_for = version;
    dlclose(handle);
    throw Error(fmt::format("module {}: built for blkstack {}, this is {}: rebuild it",
                            path, built_for, BLKSTACK_VERSION_STRING));
  }
  {
    std::lock_guard lock(loaded_mu);
    // dlopen of a loaded file returns the same handle: its init ran.
    if (!loaded.insert(handle).second) {
      dlclose(handle);
      throw Error(fmt::format("module {}: already loaded", path));
    }
  }
  // What the init registered points into the module: it stays loaded for
  // the life of the program, even when the init fails halfway.
  try {
    init();
  } catch (const Error& e) {
    throw Error(fmt::format("module {}: {}", path, e.what()));
  }
}

}  // namespace blkstack
