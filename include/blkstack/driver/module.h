// What a module (a driver or scheduler built as a shared object outside
// the tree, see blkstack/module.h) defines: its init function, with the
// version of blkstack it was built for.
//
//   #include "blkstack/driver/module.h"
//
//   BLKSTACK_MODULE_INIT() {
//     blkstack::register_driver_type(tinyram::kDriver);
//   }
//
// The init function runs once, when the module is loaded; an Error it
// throws is reported to whoever loads the module.
#pragma once

#include "blkstack/version.h"

// The loader compares these with its own before calling the init function:
// the layouts of Bio, Disk and the driver interfaces may change between
// versions, so a module runs only under the version it was built for.
#define BLKSTACK_MODULE_INIT()                                    \
  extern "C" __attribute__((visibility("default")))               \
  const char blkstack_module_version[] = BLKSTACK_VERSION_STRING; \
  extern "C" __attribute__((visibility("default"))) void blkstack_module_init()
