"""The physical map: every pageblock's class and zone, and per-zone totals.

A pageblock (2 MiB, 512 PFNs on x86-64) is the unit compaction works in and the size of
the page THP and 2 MiB hugetlb need. One unmovable or pinned page is enough to keep its
pageblock from ever becoming a free 2 MiB page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rdmapin.kernel import mmzone
from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.kernel.kpageflags import read_all
from rdmapin.physmap.classify import (
    NCLASS,
    PageClass,
    block_class,
    block_counts,
    mark_pinned,
    page_classes,
)
from rdmapin.physmap.pins import PinSet

CLASS_NAMES = tuple(c.name.lower() for c in PageClass)
_DIRTY = [PageClass.HOLE, PageClass.HUGETLB, PageClass.NOFLAGS, PageClass.UNMOVABLE]


@dataclass
class ZoneSummary:
    """Pages and pageblocks of one zone by class, and what compaction could make of it."""

    zone: mmzone.Zone
    pages: dict[str, int]
    pageblocks: dict[str, int]
    free_2m: int          # pageblocks entirely free now
    clean: int            # pageblocks with only free and movable pages
    formable_2m: int      # 2 MiB pages if every movable page moved: min(clean, free // 512)
    pinned_blocks: int    # pageblocks holding at least one pinned page
    lost_to_pins: int     # of those, the ones pins alone keep from being compacted

    def to_dict(self) -> dict:
        z = self.zone
        return {"type": "zone", "node": z.node, "zone": z.name, "start_pfn": z.start_pfn,
                "spanned": z.spanned, "present": z.present, "managed": z.managed,
                "pages": self.pages, "pageblocks": self.pageblocks, "free_2m": self.free_2m,
                "clean": self.clean, "formable_2m": self.formable_2m,
                "pinned_blocks": self.pinned_blocks, "lost_to_pins": self.lost_to_pins}


@dataclass
class PhysMap:
    order: int
    zones: list[mmzone.Zone]
    block_class: np.ndarray   # uint8 PageClass per pageblock
    block_zone: np.ndarray    # int16 index into ``zones`` per pageblock, -1 outside
    counts: np.ndarray        # (pageblocks, NCLASS) pages per class
    summaries: list[ZoneSummary]
    pins: PinSet = field(default_factory=PinSet)
    pinned_pages: int = 0

    @property
    def pages_per_block(self) -> int:
        return 1 << self.order

    def totals(self) -> dict:
        s = self.summaries
        return {"type": "summary", "order": self.order,
                "pageblock_bytes": self.pages_per_block * PAGE_SIZE,
                "pageblocks": int(sum(sum(z.pageblocks.values()) for z in s)),
                "free_2m": sum(z.free_2m for z in s), "clean": sum(z.clean for z in s),
                "formable_2m": sum(z.formable_2m for z in s),
                "pinned_pages": self.pinned_pages,
                "pinned_blocks": sum(z.pinned_blocks for z in s),
                "lost_to_pins": sum(z.lost_to_pins for z in s),
                "pin_sources": [p.to_dict() for p in self.pins.sources],
                "notes": list(self.pins.notes)}


def zone_index(n_pfns: int, zone_list: list[mmzone.Zone]) -> np.ndarray:
    """Index into ``zone_list`` of every PFN (-1 outside all spans; later zones win)."""
    out = np.full(n_pfns, -1, dtype=np.int16)
    for i, z in enumerate(zone_list):
        out[z.start_pfn:min(z.end_pfn, n_pfns)] = i
    return out


def summarise(cls: np.ndarray, zone_of: np.ndarray, zone_list: list[mmzone.Zone],
              order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[ZoneSummary]]:
    """Per-pageblock counts/class/zone and the per-zone summaries of a classified map."""
    per = 1 << order
    counts = block_counts(cls, order)
    bclass = block_class(counts)
    nblocks = len(bclass)
    zpad = np.full(nblocks * per, -1, dtype=np.int16)
    zpad[:len(zone_of)] = zone_of
    zrows = zpad.reshape(nblocks, per)
    inzone = zrows >= 0
    # A pageblock belongs to the zone of its first PFN that is in any zone.
    first = np.argmax(inzone, axis=1)
    bzone = np.where(inzone.any(axis=1), zrows[np.arange(nblocks), first], -1).astype(np.int16)

    page_counts = np.bincount(
        (zone_of[zone_of >= 0].astype(np.int64) * NCLASS + cls[:len(zone_of)][zone_of >= 0]),
        minlength=len(zone_list) * NCLASS).reshape(len(zone_list), NCLASS)
    whole = counts[:, :].sum(axis=1) == per
    dirty = counts[:, _DIRTY].sum(axis=1)
    pinned = counts[:, PageClass.PINNED]
    free_now = (counts[:, PageClass.FREE] == per) & whole
    clean = (dirty == 0) & (pinned == 0)
    lost = (dirty == 0) & (pinned > 0)

    summaries = []
    for i, z in enumerate(zone_list):
        mine = bzone == i
        bc = np.bincount(bclass[mine], minlength=NCLASS)
        n_clean = int((clean & mine).sum())
        free_pages = int(page_counts[i, PageClass.FREE])
        summaries.append(ZoneSummary(
            zone=z,
            pages={CLASS_NAMES[c]: int(page_counts[i, c]) for c in range(NCLASS)},
            pageblocks={CLASS_NAMES[c]: int(bc[c]) for c in range(NCLASS)},
            free_2m=int((free_now & mine).sum()), clean=n_clean,
            formable_2m=min(n_clean, free_pages // per),
            pinned_blocks=int(((pinned > 0) & mine).sum()),
            lost_to_pins=int((lost & mine).sum())))
    return counts, bclass, bzone, summaries


def build(pins: PinSet | None = None, *, flags: np.ndarray | None = None,
          zone_list: list[mmzone.Zone] | None = None,
          ram: list[tuple[int, int]] | None = None, order: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> PhysMap:
    """Read and classify all of physical memory (or the given ``flags`` snapshot)."""
    zone_list = mmzone.zoneinfo() if zone_list is None else zone_list
    order = mmzone.pageblock_order() if order is None else order
    ram = mmzone.system_ram() if ram is None else ram
    end = max((z.end_pfn for z in zone_list), default=0)
    if flags is None:
        flags = read_all(end, progress)
    cls = page_classes(flags, ram)
    pins = pins or PinSet()
    pinned_pages = mark_pinned(cls, pins.pfns)
    zone_of = zone_index(len(cls), zone_list)
    cls[zone_of < 0] = PageClass.HOLE
    counts, bclass, bzone, summaries = summarise(cls, zone_of, zone_list, order)
    return PhysMap(order=order, zones=zone_list, block_class=bclass, block_zone=bzone,
                   counts=counts, summaries=summaries, pins=pins, pinned_pages=pinned_pages)
