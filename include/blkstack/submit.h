// submit_bio(): the entry point of the block layer.
//
// It checks the bio against its disk (end of device, read-only, alignment to
// the logical block size, op supported) and fails it with a clear Status
// otherwise; strips PREFLUSH/FUA on a disk without a volatile write cache
// (completing an empty flush at once); accounts it in the disk's statistics;
// splits it to the disk's limits; and hands the pieces to the driver, or,
// when the driver is full (BioDriver::busy, a bio depth), parks them in
// order until it has room (src/core/bio_gate.h).
//
// Recursion is flattened (submit_bio_noacct): a bio submitted from inside a
// driver's submit() is queued on the thread's bio list and dispatched when
// that submit() returns, bios for lower devices before the submitting
// device's later siblings. A stack of any depth uses bounded C++ stack. The
// bio may complete before submit_bio() returns; see bio.h on references.
#pragma once

#include "blkstack/bio.h"

namespace blkstack {

void submit_bio(Bio& bio);

// For a bio's owner, from its completion callback, when the bio ended with
// a busy status (status_is_busy): restarts it from `start` (Bio::start(),
// saved before the first submit_bio) and submits it again after
// BioDriver::kBusyRetryNs, from the busy timer's thread. Busy is
// back-pressure, never an error a client sees (DESIGN.md invariant 3).
void resubmit_busy(Bio& bio, const BioStart& start);

}  // namespace blkstack
