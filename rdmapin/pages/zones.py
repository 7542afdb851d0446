"""PFN -> NUMA node and zone (DMA, DMA32, Normal, Movable, Device), vectorised.

The node comes from the memory blocks linked under /sys/devices/system/node/nodeN/ (exact
per block); the zone from each online block's ``valid_zones`` (the zone it is in), and for
blocks that span zones (``none``) from the zone spans in /proc/zoneinfo of that node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rdmapin.pages.pagemap import PAGE_SHIFT

NODE_DIR = Path("/sys/devices/system/node")
MEMORY_DIR = Path("/sys/devices/system/memory")
ZONE_NAMES = ("DMA", "DMA32", "Normal", "Movable", "Device")
UNKNOWN = -1


@dataclass(frozen=True)
class ZoneSpan:
    node: int
    zone: str
    start_pfn: int
    spanned: int


def zone_spans(text: str | None = None) -> list[ZoneSpan]:
    """Populated zones from /proc/zoneinfo (node, name, start_pfn, spanned)."""
    if text is None:
        text = Path("/proc/zoneinfo").read_text()
    out: list[ZoneSpan] = []
    node = zone = None
    spanned = 0
    for line in text.splitlines():
        m = re.match(r"Node (\d+), zone\s+(\S+)", line)
        if m:
            node, zone = int(m.group(1)), m.group(2)
            spanned = 0
            continue
        s = line.split()
        if len(s) == 2 and s[0] == "spanned":
            spanned = int(s[1])
        elif s[:1] == ["start_pfn:"] and node is not None and spanned:
            out.append(ZoneSpan(node, zone, int(s[1]), spanned))
    return out


class ZoneMap:
    """A snapshot of the physical layout: node and zone index of every memory block."""

    def __init__(self) -> None:
        self.block_pages = int((MEMORY_DIR / "block_size_bytes").read_text(), 16) >> PAGE_SHIFT
        self.spans = zone_spans()
        blocks: dict[int, tuple[int, int]] = {}
        for node_dir in NODE_DIR.glob("node[0-9]*"):
            node = int(node_dir.name[4:])
            for mem in node_dir.glob("memory[0-9]*"):
                idx = int(mem.name[6:])
                zone = UNKNOWN
                try:
                    vz = (MEMORY_DIR / mem.name / "valid_zones").read_text().split()
                    state = (MEMORY_DIR / mem.name / "state").read_text().strip()
                except OSError:
                    vz, state = [], ""
                if state == "online" and len(vz) == 1 and vz[0] in ZONE_NAMES:
                    zone = ZONE_NAMES.index(vz[0])
                blocks[idx] = (node, zone)
        size = max(blocks) + 1 if blocks else 0
        self.block_node = np.full(size, UNKNOWN, dtype=np.int16)
        self.block_zone = np.full(size, UNKNOWN, dtype=np.int16)
        for idx, (node, zone) in blocks.items():
            self.block_node[idx] = node
            self.block_zone[idx] = zone

    def lookup(self, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(node, zone index into ZONE_NAMES) per PFN; -1 where unknown."""
        pfns = np.asarray(pfns, dtype=np.uint64)
        block = (pfns // np.uint64(self.block_pages)).astype(np.int64)
        inside = block < len(self.block_node)
        safe = np.where(inside, block, 0)
        node = np.where(inside, self.block_node[safe], UNKNOWN).astype(np.int16)
        zone = np.where(inside, self.block_zone[safe], UNKNOWN).astype(np.int16)
        todo = zone == UNKNOWN
        if todo.any():
            p = pfns[todo].astype(np.int64)
            n = node[todo]
            z = np.full(len(p), UNKNOWN, dtype=np.int16)
            for span in self.spans:  # later (higher) zones win where spans overlap
                if span.zone not in ZONE_NAMES:
                    continue
                hit = (p >= span.start_pfn) & (p < span.start_pfn + span.spanned)
                hit &= (n == span.node) | (n == UNKNOWN)
                z[hit] = ZONE_NAMES.index(span.zone)
                n = np.where(hit & (n == UNKNOWN), span.node, n)
            zone[todo] = z
            node[todo] = n
        return node, zone
