// tinyram's driver type, for a program that registers it itself.
#pragma once

#include "blkstack/driver/driver_type.h"

namespace tinyram {
extern const blkstack::DriverType kDriver;
}
