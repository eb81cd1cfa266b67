// PartitionTable: what a disk's partition table says (MBR "dos" or GPT), as
// read when the disk was added or last rescanned (Disk::rescan_partitions,
// the kernel's BLKRRPART). The parsers live in src/disk/partitions/ and read
// tables as libblkid reads them; docs/partitions.md describes the rules.
//
// Positions and sizes are in the table's own units, logical blocks of
// `sector_size` bytes (as sfdisk --json prints them); the partitions'
// BlockDevices (Disk::partitions()) count 512-byte sectors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace blkstack {

struct PartitionInfo {
  unsigned number = 0;  // as Linux numbers it: MBR logicals from 5, GPT slot + 1
  uint64_t start = 0;   // first logical block
  uint64_t size = 0;    // logical blocks
  // dos: the type byte in lower-case hex without 0x ("83", "5"), as sfdisk;
  // gpt: the type GUID in upper case.
  std::string type;
  // gpt: the partition GUID in upper case; dos: "1234abcd-05", the disk id
  // and the number, as libblkid makes one up (PART_ENTRY_UUID).
  std::string uuid;
  std::string name;       // gpt: the UTF-16LE name as UTF-8
  uint64_t attrs = 0;     // gpt: the attribute bits
  bool bootable = false;  // dos: boot indicator 0x80
  bool extended = false;  // dos: an extended partition (its device is 1 KiB)
};

struct PartitionTable {
  std::string label;  // "dos", "gpt", or empty: no table
  // dos: the disk signature "0x1234abcd"; gpt: the disk GUID in upper case.
  std::string id;
  unsigned sector_size = 512;
  uint64_t first_lba = 0;  // gpt: first and last usable logical block
  uint64_t last_lba = 0;
  std::vector<PartitionInfo> partitions;  // by number
  // Why a table was found and refused (then `partitions` is empty), or
  // empty. A disk without any table has neither label nor error.
  std::string error;
  // Things read past (a damaged primary GPT header, a number beyond what a
  // disk has devices for): the table is used.
  std::vector<std::string> warnings;
};

// The GPT attribute bits as sfdisk names them ("RequiredPartition
// LegacyBIOSBootable GUID:60"); empty for none.
std::string gpt_attrs_string(uint64_t attrs);

}  // namespace blkstack
