// A disk's partition table for people and scripts: sfdisk --json's object
// (keys, units and order, so that scripts written for sfdisk read it
// unchanged) and a listing like `sfdisk -l`. Used by `blkstack part` and
// the control socket's describe and rescan verbs (docs/partitions.md).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "blkstack/disk.h"

namespace blkstack::serve {

// {"partitiontable": {"label", "id", "device", "unit": "sectors",
// "firstlba", "lastlba" (gpt), "sectorsize", "partitions": [{"node",
// "start", "size", "type", "uuid" (gpt), "name", "attrs", "bootable"}]}};
// blkstack's own keys beside sfdisk's: "error" and "warnings" when there
// are any. Null when the disk has no table (and no refused one).
nlohmann::ordered_json partition_table_json(const Disk& disk);

// The `sfdisk -l` listing: the disk line, units, label, identifier, then
// one row per partition.
std::string partition_table_text(const Disk& disk);

}  // namespace blkstack::serve
