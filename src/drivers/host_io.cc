#include "drivers/host_io.h"

namespace blkstack {
namespace {
thread_local const HostIoFactory* t_factory = nullptr;
}  // namespace

ScopedHostIoFactory::ScopedHostIoFactory(HostIoFactory factory)
    : outer_(t_factory), factory_(std::move(factory)) {
  t_factory = &factory_;
}

ScopedHostIoFactory::~ScopedHostIoFactory() { t_factory = outer_; }

const HostIoFactory* ScopedHostIoFactory::current() { return t_factory; }

}  // namespace blkstack
