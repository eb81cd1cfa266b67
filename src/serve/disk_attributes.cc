#include "serve/disk_attributes.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <functional>
#include <mutex>

#include "blkstack/disk.h"
#include "blkstack/driver/queue.h"
#include "blkstack/driver/scheduler.h"
#include "blkstack/error.h"
#include "blkstack/page_cache.h"
#include "serve/control_protocol.h"

namespace blkstack::serve {
namespace {

constexpr std::string_view kIosched = "queue/iosched/";

// One attribute: how to read it, and how to write it (null: read-only).
// `q` is the disk's request queue, or null for a bio-based disk.
struct Entry {
  std::string_view name;
  bool needs_queue;  // only request-based disks have it
  std::function<std::string(Disk&, Queue*)> read;
  std::function<void(Disk&, Queue*, std::string_view)> write;
};

std::mutex& attribute_lock() {
  static std::mutex m;
  return m;
}

ControlError invalid(const std::string& message) {
  return ControlError(control_code::kInvalidArgument, message);
}

uint64_t parse_uint(std::string_view name, std::string_view v, uint64_t min,
                    uint64_t max) {
  uint64_t n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n < min || n > max) {
    throw invalid(
        fmt::format("{}: '{}' is not a number from {} to {}", name, v, min, max));
  }
  return n;
}

bool parse_bool(std::string_view name, std::string_view v) {
  if (v == "0") return false;
  if (v == "1") return true;
  throw invalid(fmt::format("{}: '{}' is not 0 or 1", name, v));
}

std::string flag(bool b) { return b ? "1" : "0"; }

// /sys/block/DEV/stat: 17 fields, each right-aligned in 8 (Linux's
// part_stat_show).
std::string stat_line(const Disk& d) {
  const DiskStats s = d.stats();
  auto ms = [](uint64_t ns) { return ns / 1'000'000; };
  return fmt::format(
      "{:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} {:8} "
      "{:8}",
      s.ios[kStatRead], s.merges[kStatRead], s.sectors[kStatRead], ms(s.nsecs[kStatRead]),
      s.ios[kStatWrite], s.merges[kStatWrite], s.sectors[kStatWrite],
      ms(s.nsecs[kStatWrite]), s.in_flight, s.io_ticks_ms, s.time_in_queue_ms,
      s.ios[kStatDiscard], s.merges[kStatDiscard], s.sectors[kStatDiscard],
      ms(s.nsecs[kStatDiscard]), s.ios[kStatFlush], ms(s.nsecs[kStatFlush]));
}

std::string scheduler_line(Queue* q) {
  if (q == nullptr) return "none";
  const std::string current = q->scheduler_name();
  std::string out;
  for (const SchedulerType* t : scheduler_types()) {
    if (!out.empty()) out += ' ';
    out += t->name == current ? fmt::format("[{}]", t->name) : std::string(t->name);
  }
  return out;
}

std::string kb(uint64_t bytes) { return std::to_string(bytes >> 10); }

// The page cache's settings (page_cache.h), named as Linux's vm sysctls
// under vm/ and queue/read_ahead_kb: a disk without a cache shows the
// defaults; setting one attaches the cache.
VmSettings cache_settings(Disk& d) {
  const PageCache* c = d.page_cache();
  return c ? c->settings() : VmSettings{};
}

template <class T>
Entry vm_entry(std::string_view name, T VmSettings::*field, uint64_t min, uint64_t max) {
  return {name, false,
          [field](Disk& d, Queue*) { return std::to_string(cache_settings(d).*field); },
          [name, field, min, max](Disk& d, Queue*, std::string_view v) {
            const T value = static_cast<T>(parse_uint(name, v, min, max));
            PageCache& c = PageCache::attach(d);
            VmSettings s = c.settings();
            s.*field = value;
            try {
              c.set_settings(s);
            } catch (const Error& e) {
              throw invalid(fmt::format("{}: {}", name, e.what()));
            }
          }};
}

const std::vector<Entry>& table() {
  static const std::vector<Entry> entries = {
      {"dev", false,
       [](Disk& d, Queue*) { return fmt::format("{}:{}", d.major(), d.minor()); },
       nullptr},
      // blkstack counts a disk's I/O in flight, not per direction: all of
      // it shows as reads, so the sum scripts take is right.
      {"inflight", false,
       [](Disk& d, Queue*) { return fmt::format("{:8} {:8}", d.in_flight(), 0); },
       nullptr},
      {"queue/discard_granularity", false,
       [](Disk& d, Queue*) { return std::to_string(d.limits().discard_granularity); },
       nullptr},
      {"queue/discard_max_bytes", false,
       [](Disk& d, Queue*) {
         return std::to_string(uint64_t{d.limits().max_discard_sectors} << kSectorShift);
       },
       nullptr},
      {"queue/fua", false, [](Disk& d, Queue*) { return flag(d.limits().fua); }, nullptr},
      {"queue/hw_sector_size", false,
       [](Disk& d, Queue*) { return std::to_string(d.limits().logical_block_size); },
       nullptr},
      {"queue/io_poll", false,
       [](Disk& d, Queue*) { return flag(d.driver().can_poll()); }, nullptr},
      {"queue/logical_block_size", false,
       [](Disk& d, Queue*) { return std::to_string(d.limits().logical_block_size); },
       nullptr},
      {"queue/max_hw_sectors_kb", false,
       [](Disk& d, Queue*) {
         return kb(uint64_t{d.limits().max_hw_sectors} << kSectorShift);
       },
       nullptr},
      {"queue/max_sectors_kb", false,
       [](Disk& d, Queue*) {
         return kb(uint64_t{d.limits().max_io_sectors()} << kSectorShift);
       },
       [](Disk& d, Queue*, std::string_view v) {
         const QueueLimits& l = d.limits();
         const uint64_t max = (uint64_t{l.max_hw_sectors} << kSectorShift) >> 10;
         const uint64_t min = std::max<uint64_t>(4, l.logical_block_size >> 10);
         const uint64_t n = parse_uint("queue/max_sectors_kb", v, min, max);
         // Linux rounds down to the logical block size; so does this.
         const uint32_t lbs_sectors = l.logical_block_size >> kSectorShift;
         d.set_max_sectors(static_cast<uint32_t>(n * 2 / lbs_sectors * lbs_sectors));
       }},
      {"queue/max_segment_size", false,
       [](Disk& d, Queue*) { return std::to_string(d.limits().max_segment_size); },
       nullptr},
      {"queue/max_segments", false,
       [](Disk& d, Queue*) { return std::to_string(d.limits().max_segments); }, nullptr},
      {"queue/nomerges", true,
       [](Disk&, Queue* q) { return std::to_string(q->nomerges()); },
       [](Disk&, Queue* q, std::string_view v) {
         q->set_nomerges(static_cast<unsigned>(parse_uint("queue/nomerges", v, 0, 2)));
       }},
      {"queue/nr_requests", true,
       [](Disk&, Queue* q) { return std::to_string(q->nr_requests()); },
       [](Disk&, Queue* q, std::string_view v) {
         q->set_nr_requests(static_cast<unsigned>(
             parse_uint("queue/nr_requests", v, 1, Queue::kMaxNrRequests)));
       }},
      {"queue/optimal_io_size", false,
       [](Disk& d, Queue*) { return std::to_string(d.limits().optimal_io_size); },
       nullptr},
      {"queue/physical_block_size", false,
       [](Disk& d, Queue*) { return std::to_string(d.limits().physical_block_size); },
       nullptr},
      {"queue/rotational", false, [](Disk& d, Queue*) { return flag(d.rotational()); },
       [](Disk& d, Queue*, std::string_view v) {
         d.set_rotational(parse_bool("queue/rotational", v));
       }},
      {"queue/scheduler", false, [](Disk&, Queue* q) { return scheduler_line(q); },
       [](Disk&, Queue* q, std::string_view v) {
         if (q == nullptr) {
           throw invalid("queue/scheduler: a bio-based disk has no I/O scheduler");
         }
         try {
           find_scheduler_type(v);
         } catch (const Error&) {
           throw invalid(fmt::format("queue/scheduler: '{}' is not one of: {}", v,
                                     scheduler_line(q)));
         }
         q->set_scheduler(v);
       }},
      {"queue/write_cache", false,
       [](Disk& d, Queue*) {
         return std::string(d.write_cache() ? "write back" : "write through");
       },
       [](Disk& d, Queue*, std::string_view v) {
         if (v == "write back") {
           if (!d.limits().volatile_write_cache) {
             throw invalid(
                 "queue/write_cache: the device has no volatile cache; "
                 "only \"write through\"");
           }
           d.set_write_cache(true);
         } else if (v == "write through" || v == "none") {
           d.set_write_cache(false);
         } else {
           throw invalid(fmt::format(
               "queue/write_cache: '{}' is not \"write back\" or \"write through\"", v));
         }
       }},
      {"queue/write_zeroes_max_bytes", false,
       [](Disk& d, Queue*) {
         return std::to_string(uint64_t{d.limits().max_write_zeroes_sectors}
                               << kSectorShift);
       },
       nullptr},
      vm_entry("queue/read_ahead_kb", &VmSettings::read_ahead_kb, 0, 65536),
      vm_entry("vm/cache_budget_kb", &VmSettings::cache_budget_kb, 1024,
               uint64_t{1} << 32),
      vm_entry("vm/dirty_background_ratio", &VmSettings::dirty_background_ratio, 1, 99),
      vm_entry("vm/dirty_expire_centisecs", &VmSettings::dirty_expire_centisecs, 1,
               8640000),
      vm_entry("vm/dirty_ratio", &VmSettings::dirty_ratio, 2, 100),
      vm_entry("vm/dirty_writeback_centisecs", &VmSettings::dirty_writeback_centisecs, 1,
               8640000),
      {"ro", false, [](Disk& d, Queue*) { return flag(d.read_only()); }, nullptr},
      {"size", false, [](Disk& d, Queue*) { return std::to_string(d.capacity()); },
       nullptr},
      {"stat", false, [](Disk& d, Queue*) { return stat_line(d); }, nullptr},
  };
  return entries;
}

Queue* queue_of(Disk& disk) { return dynamic_cast<Queue*>(&disk.driver()); }

const Entry* find_entry(std::string_view name, Queue* q) {
  for (const Entry& e : table()) {
    if (e.name == name) return e.needs_queue && q == nullptr ? nullptr : &e;
  }
  return nullptr;
}

ControlError not_found(const Disk& disk, std::string_view name) {
  return ControlError(control_code::kNotFound,
                      fmt::format("disk '{}' has no attribute '{}'", disk.name(), name));
}

// queue/iosched/NAME: the scheduler's tunable NAME, if it has one.
bool read_tunable(Queue* q, std::string_view name, std::string& value) {
  Scheduler* s = q != nullptr ? q->scheduler() : nullptr;
  if (s == nullptr) return false;
  for (auto& [n, v] : s->tunables()) {
    if (n == name) {
      value = v;
      return true;
    }
  }
  return false;
}

std::string read_locked(Disk& disk, Queue* q, std::string_view name) {
  if (name.starts_with(kIosched)) {
    std::string value;
    if (!read_tunable(q, name.substr(kIosched.size()), value))
      throw not_found(disk, name);
    return value;
  }
  const Entry* e = find_entry(name, q);
  if (e == nullptr) throw not_found(disk, name);
  return e->read(disk, q);
}

}  // namespace

std::vector<DiskAttribute> list_disk_attributes(Disk& disk) {
  std::lock_guard lock(attribute_lock());
  Queue* q = queue_of(disk);
  std::vector<DiskAttribute> out;
  for (const Entry& e : table()) {
    if (e.needs_queue && q == nullptr) continue;
    const bool writable =
        e.write != nullptr && (q != nullptr || e.name != "queue/scheduler");
    out.push_back({std::string(e.name), writable, e.read(disk, q)});
  }
  if (Scheduler* s = q != nullptr ? q->scheduler() : nullptr) {
    for (auto& [n, v] : s->tunables()) {
      out.push_back({std::string(kIosched) + n, true, v});
    }
  }
  std::sort(out.begin(), out.end(), [](const DiskAttribute& a, const DiskAttribute& b) {
    return a.name < b.name;
  });
  return out;
}

std::string read_disk_attribute(Disk& disk, std::string_view name) {
  std::lock_guard lock(attribute_lock());
  return read_locked(disk, queue_of(disk), name);
}

std::string write_disk_attribute(Disk& disk, std::string_view name,
                                 std::string_view value) {
  std::lock_guard lock(attribute_lock());
  Queue* q = queue_of(disk);
  if (value.ends_with('\n')) value.remove_suffix(1);
  try {
    if (name.starts_with(kIosched)) {
      std::string old;
      if (!read_tunable(q, name.substr(kIosched.size()), old))
        throw not_found(disk, name);
      try {
        q->scheduler()->set_tunable(name.substr(kIosched.size()), value);
      } catch (const Error& e) {
        throw invalid(fmt::format("{}: {}", name, e.what()));
      }
    } else {
      const Entry* e = find_entry(name, q);
      if (e == nullptr) throw not_found(disk, name);
      if (e->write == nullptr) throw invalid(fmt::format("{} is read-only", name));
      e->write(disk, q, value);
    }
  } catch (const ControlError&) {
    throw;
  } catch (const BusyError& e) {
    throw ControlError(control_code::kBusy, e.what());
  } catch (const std::exception& e) {
    throw ControlError(control_code::kFailed, e.what());
  }
  return read_locked(disk, q, name);
}

}  // namespace blkstack::serve
