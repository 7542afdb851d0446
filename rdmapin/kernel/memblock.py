"""PFN -> NUMA node and zone (DMA, DMA32, Normal, Movable, Device), vectorised. Mirrors
drivers/base/memory.c (``valid_zones_show``, the ``nodeN`` links); checked on 6.1, 6.12, 6.18.

Memory is onlined in blocks (/sys/devices/system/memory/memoryN, ``block_size_bytes``
each): a block's ``nodeX`` link gives its node and, when online and inside one zone, its
``valid_zones`` names that zone. Blocks that span zones (``none``, e.g. DMA|DMA32 at the
bottom of memory) fall back to the zone spans in /proc/zoneinfo of that node. Only the
blocks a region touches are read, so a lookup costs O(pages + touched blocks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rdmapin.kernel import mmzone
from rdmapin.kernel.arch import PAGE_SHIFT

MEMORY_DIR = Path("/sys/devices/system/memory")
ZONE_NAMES = ("DMA", "DMA32", "Normal", "Movable", "Device")
UNKNOWN = -1


def block_pages() -> int:
    return int((MEMORY_DIR / "block_size_bytes").read_text(), 16) >> PAGE_SHIFT


def block_info(index: int) -> tuple[int, int]:
    """(node, zone index) of memory block ``index``; -1 for what sysfs does not say."""
    d = MEMORY_DIR / f"memory{index}"
    node = zone = UNKNOWN
    try:
        for name in os.listdir(d):
            if name.startswith("node") and name[4:].isdigit():
                node = int(name[4:])
        if (d / "state").read_text().strip() == "online":
            vz = (d / "valid_zones").read_text().split()
            if len(vz) == 1 and vz[0] in ZONE_NAMES:
                zone = ZONE_NAMES.index(vz[0])
    except OSError:
        pass
    return node, zone


def lookup(pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(node, zone index into ZONE_NAMES) per PFN, int16; -1 where unknown."""
    pfns = np.asarray(pfns, dtype=np.uint64)
    if len(pfns) == 0:
        return np.empty(0, np.int16), np.empty(0, np.int16)
    block = (pfns >> np.uint64(block_pages().bit_length() - 1)).astype(np.int64)
    lo = int(block.min())
    touched = np.flatnonzero(np.bincount(block - lo)) + lo
    table_node = np.full(int(touched[-1]) - lo + 1, UNKNOWN, dtype=np.int16)
    table_zone = table_node.copy()
    for b in touched.tolist():
        table_node[b - lo], table_zone[b - lo] = block_info(b)
    node = table_node[block - lo]
    zone = table_zone[block - lo]
    todo = zone == UNKNOWN
    if todo.any():
        p = pfns[todo].astype(np.int64)
        n = node[todo]
        z = np.full(len(p), UNKNOWN, dtype=np.int16)
        for span in mmzone.zoneinfo():  # later (higher) zones win where spans overlap
            if span.name not in ZONE_NAMES:
                continue
            hit = (p >= span.start_pfn) & (p < span.start_pfn + span.spanned)
            hit &= (n == span.node) | (n == UNKNOWN)
            z[hit] = ZONE_NAMES.index(span.name)
            n = np.where(hit & (n == UNKNOWN), span.node, n)
        zone[todo] = z
        node[todo] = n
    return node, zone
