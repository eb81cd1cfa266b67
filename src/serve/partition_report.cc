#include "serve/partition_report.h"

#include <fmt/format.h>

#include <vector>

#include "blkstack/device_spec.h"

namespace blkstack::serve {
namespace {

// The device node of partition `number`, named as Disk names its devices
// (numbers beyond the disk's devices too, as sfdisk names them).
std::string node_name(const std::string& disk, unsigned number) {
  const bool digit = !disk.empty() && disk.back() >= '0' && disk.back() <= '9';
  return fmt::format("{}{}{}", disk, digit ? "p" : "", number);
}

// The names sfdisk -l prints for the common types (libfdisk's tables);
// others print as their code.
std::string dos_type_name(const std::string& t) {
  static const std::pair<const char*, const char*> kNames[] = {
      {"5", "Extended"},
      {"7", "HPFS/NTFS/exFAT"},
      {"b", "W95 FAT32"},
      {"c", "W95 FAT32 (LBA)"},
      {"e", "W95 FAT16 (LBA)"},
      {"f", "W95 Ext'd (LBA)"},
      {"82", "Linux swap / Solaris"},
      {"83", "Linux"},
      {"85", "Linux extended"},
      {"8e", "Linux LVM"},
      {"ee", "GPT"},
      {"ef", "EFI (FAT-12/16/32)"},
      {"fd", "Linux raid autodetect"}};
  for (const auto& [code, name] : kNames)
    if (t == code) return name;
  return "unknown";
}

std::string gpt_type_name(const std::string& t) {
  static const std::pair<const char*, const char*> kNames[] = {
      {"C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"},
      {"21686148-6449-6E6F-744E-656564454649", "BIOS boot"},
      {"0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"},
      {"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"},
      {"E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"},
      {"A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"},
      {"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)"},
      {"933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"},
      {"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"}};
  for (const auto& [guid, name] : kNames)
    if (t == guid) return name;
  return t;
}

// sfdisk's short sizes: "4M", "1.5G" (powers of 1024, one decimal).
std::string short_size(uint64_t bytes) {
  static const char kUnits[] = "BKMGTPE";
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  std::string s = fmt::format("{:.1f}", v);
  if (s.ends_with(".0")) s.resize(s.size() - 2);
  return s + (u ? std::string(1, kUnits[u]) : "B");
}

}  // namespace

nlohmann::ordered_json partition_table_json(const Disk& disk) {
  const PartitionTable t = disk.partition_table();
  if (t.label.empty() && t.error.empty()) return nullptr;
  nlohmann::ordered_json j;
  j["label"] = t.label;
  j["id"] = t.id;
  j["device"] = disk.name();
  j["unit"] = "sectors";
  if (t.label == "gpt") {
    j["firstlba"] = t.first_lba;
    j["lastlba"] = t.last_lba;
  }
  j["sectorsize"] = t.sector_size;
  nlohmann::ordered_json parts = nlohmann::ordered_json::array();
  for (const PartitionInfo& p : t.partitions) {
    nlohmann::ordered_json e;
    e["node"] = node_name(disk.name(), p.number);
    e["start"] = p.start;
    e["size"] = p.size;
    e["type"] = p.type;
    if (t.label == "gpt") e["uuid"] = p.uuid;
    if (!p.name.empty()) e["name"] = p.name;
    if (p.attrs != 0) e["attrs"] = gpt_attrs_string(p.attrs);
    if (p.bootable) e["bootable"] = true;
    parts.push_back(std::move(e));
  }
  j["partitions"] = std::move(parts);
  if (!t.error.empty()) j["error"] = t.error;
  if (!t.warnings.empty()) j["warnings"] = t.warnings;
  return {{"partitiontable", std::move(j)}};
}

std::string partition_table_text(const Disk& disk) {
  const PartitionTable t = disk.partition_table();
  const unsigned ss = t.sector_size;
  std::string out = fmt::format("Disk {}: {}, {} bytes, {} sectors\n", disk.name(),
                                format_size(disk.size_bytes()), disk.size_bytes(),
                                disk.size_bytes() / ss);
  out += fmt::format("Units: sectors of 1 * {} = {} bytes\n", ss, ss);
  out += fmt::format("Sector size (logical/physical): {} bytes / {} bytes\n",
                     disk.limits().logical_block_size, disk.limits().physical_block_size);
  if (t.label.empty() && t.error.empty()) return out;
  out += fmt::format("Disklabel type: {}\nDisk identifier: {}\n", t.label, t.id);
  if (t.label == "gpt")
    out += fmt::format("First usable LBA: {}\nLast usable LBA: {}\n", t.first_lba,
                       t.last_lba);
  for (const std::string& w : t.warnings) out += fmt::format("Warning: {}\n", w);
  if (!t.error.empty()) return out + fmt::format("Error: {}\n", t.error);
  const bool dos = t.label == "dos";
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"Device", "Start", "End", "Sectors", "Size"});
  if (dos) {
    rows[0].insert(rows[0].begin() + 1, "Boot");
    rows[0].push_back("Id");
  }
  rows[0].push_back("Type");
  for (const PartitionInfo& p : t.partitions) {
    std::vector<std::string> r = {node_name(disk.name(), p.number),
                                  std::to_string(p.start),
                                  std::to_string(p.start + p.size - 1),
                                  std::to_string(p.size), short_size(p.size * ss)};
    if (dos) {
      r.insert(r.begin() + 1, p.bootable ? "*" : "");
      r.push_back(p.type);
      r.push_back(dos_type_name(p.type));
    } else {
      r.push_back(gpt_type_name(p.type));
    }
    rows.push_back(std::move(r));
  }
  // Columns as sfdisk aligns them: the device name and type left, numbers right.
  std::vector<size_t> w(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  out += "\n";
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      const bool left = i == 0 || i + 1 == r.size() || (dos && i == 1);
      line +=
          left ? fmt::format("{:<{}}", r[i], w[i]) : fmt::format("{:>{}}", r[i], w[i]);
      if (i + 1 < r.size()) line += ' ';
    }
    while (line.ends_with(' ')) line.pop_back();
    out += line + "\n";
  }
  return out;
}

}  // namespace blkstack::serve
