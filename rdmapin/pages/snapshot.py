"""Where a region's pages are now, and later which of them moved.

Pinned pages must keep their PFN (migration refuses them); mlocked pages may move (mlock
only keeps them resident). A snapshot is the pagemap PFN array; a comparison reports pages
whose PFN changed while present in both, plus pages that appeared or went away.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from rdmapin.errors import RdmapinError
from rdmapin.kernel import pagemap
from rdmapin.kernel.arch import PAGE_SIZE


@dataclass(frozen=True)
class Snapshot:
    pid: int
    addr: int
    length: int
    pfns: np.ndarray  # uint64 per base page, 0 = not present
    taken: float  # time.monotonic()


@dataclass(frozen=True)
class Comparison:
    pages: int
    moved: int  # present before and after, at a different PFN
    unchanged: int
    appeared: int  # not present before, present now
    vanished: int  # present before, not present now
    moved_addrs: np.ndarray  # virtual address of each moved page

    def to_dict(self) -> dict:
        return {"pages": self.pages, "moved": self.moved, "unchanged": self.unchanged,
                "appeared": self.appeared, "vanished": self.vanished}


def snapshot(addr: int, length: int, pid: int | None = None) -> Snapshot:
    """Record the PFN behind every base page of [addr, addr + length) in ``pid``."""
    pid = os.getpid() if pid is None else int(pid)
    entries = pagemap.read(pid, addr, length)
    if pagemap.pfns_hidden(entries):
        raise RdmapinError(f"pid {pid}: pagemap shows present pages without PFNs",
                           hint="snapshots need CAP_SYS_ADMIN (run as root)")
    return Snapshot(pid, addr, length, pagemap.pfns(entries), time.monotonic())


def compare(before: Snapshot, after: Snapshot | None = None) -> Comparison:
    """Pages whose PFN changed between ``before`` and ``after`` (default: now)."""
    if after is None:
        after = snapshot(before.addr, before.length, before.pid)
    if (before.pid, before.addr, before.length) != (after.pid, after.addr, after.length):
        raise RdmapinError("snapshots of different regions cannot be compared: "
                           f"{before.addr:#x}+{before.length} vs {after.addr:#x}+{after.length}")
    a, b = before.pfns, after.pfns
    pa, pb = a != 0, b != 0
    both = pa & pb
    moved = both & (a != b)
    first = before.addr - before.addr % PAGE_SIZE
    addrs = np.uint64(first) + np.flatnonzero(moved).astype(np.uint64) * np.uint64(PAGE_SIZE)
    return Comparison(pages=len(a), moved=int(moved.sum()), unchanged=int((both & ~moved).sum()),
                      appeared=int((~pa & pb).sum()), vanished=int((pa & ~pb).sum()),
                      moved_addrs=addrs)
