"""Every PFN's kpageflags entry turned into one class, and pageblocks into their worst.

Classes, from harmless to harmful for forming a 2 MiB page out of a pageblock:

- hole: not RAM (outside "System RAM", KPF_NOPAGE, KPF_OFFLINE) or outside every zone;
- free: on the buddy free lists (KPF_BUDDY is set on head *and* tail pages of a free
  block, fs/proc/page.c);
- movable: user memory compaction can migrate (LRU, anon, THP, mapped);
- hugetlb: already part of a hugetlb page;
- noflags: allocated without any page flag (raw kernel allocations, per-CPU free lists,
  memmap not yet initialised by deferred init): compaction cannot move it;
- unmovable: slab, page tables, reserved and other kernel pages;
- pinned: held by a registered MR (no kpageflags bit says "pinned", so these come from
  the MR inventory, see ``pins``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np

from rdmapin.kernel.kpageflags import KPF, mask


class PageClass(enum.IntEnum):
    """Ordered: a pageblock takes the highest class of its pages."""

    HOLE = 0
    FREE = 1
    MOVABLE = 2
    HUGETLB = 3
    NOFLAGS = 4
    UNMOVABLE = 5
    PINNED = 6


NCLASS = len(PageClass)

_HOLE = mask(KPF.NOPAGE, KPF.OFFLINE)
_MOVABLE = mask(KPF.LRU, KPF.ANON, KPF.THP, KPF.MMAP)
_KERNEL = mask(KPF.SLAB, KPF.PGTABLE, KPF.RESERVED)


def page_classes(flags: np.ndarray, ram: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """One PageClass (uint8) per PFN; PFN i is flags[i]. ``ram``: [first, end) PFN ranges
    of System RAM (empty: trust kpageflags alone)."""
    cls = np.full(len(flags), PageClass.UNMOVABLE, dtype=np.uint8)
    cls[flags == 0] = PageClass.NOFLAGS
    movable = ((flags & _MOVABLE) != 0) & ((flags & _KERNEL) == 0)
    cls[movable] = PageClass.MOVABLE
    cls[(flags & np.uint64(1 << KPF.HUGE)) != 0] = PageClass.HUGETLB
    cls[(flags & np.uint64(1 << KPF.BUDDY)) != 0] = PageClass.FREE
    cls[(flags & _HOLE) != 0] = PageClass.HOLE
    if ram:
        inside = np.zeros(len(flags), dtype=bool)
        for first, end in ram:
            inside[first:end] = True
        cls[~inside] = PageClass.HOLE
    return cls


def mark_pinned(cls: np.ndarray, pfns: np.ndarray) -> int:
    """Set PINNED on ``pfns`` (those inside the map); returns how many distinct PFNs."""
    pfns = np.unique(np.asarray(pfns, dtype=np.int64))
    pfns = pfns[(pfns > 0) & (pfns < len(cls))]
    cls[pfns] = PageClass.PINNED
    return len(pfns)


def block_counts(cls: np.ndarray, order: int) -> np.ndarray:
    """(pageblocks, NCLASS) page counts; a partial last block is padded with holes."""
    per = 1 << order
    nblocks = -(-len(cls) // per)
    padded = np.full(nblocks * per, PageClass.HOLE, dtype=np.uint8)
    padded[:len(cls)] = cls
    rows = np.repeat(np.arange(nblocks, dtype=np.int64), per)
    return np.bincount(rows * NCLASS + padded, minlength=nblocks * NCLASS
                       ).reshape(nblocks, NCLASS).astype(np.int32)


def block_class(counts: np.ndarray) -> np.ndarray:
    """Worst class present in each pageblock (HOLE only when the block is all hole)."""
    present = counts > 0
    # Index of the last True along the class axis = highest class present.
    return (NCLASS - 1 - np.argmax(present[:, ::-1], axis=1)).astype(np.uint8)
