"""The zone layout and free-list state as the kernel prints them.

/proc/zoneinfo gives each zone's PFN span (start_pfn, spanned) and what of it is present
and managed; /proc/buddyinfo the free blocks per order; /proc/pagetypeinfo the pageblock
order. The fragmentation map and `rdmapin doctor` both start from these. Mirrors
mm/vmstat.c (``zoneinfo_show_print``, ``frag_show_print``, ``pagetypeinfo_showfree``); checked
on 6.1, 6.12 and 6.18 (6.12 prints the same fields; empty zones print no start_pfn on all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rdmapin.kernel.arch import PAGE_SHIFT
from rdmapin.kernel.textfile import lines

PROC = Path("/proc")
DEFAULT_PAGEBLOCK_ORDER = 9  # x86-64 with 4 KiB pages: HPAGE_PMD_ORDER

_ZONE_RE = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)")


@dataclass(frozen=True)
class Zone:
    """One zone of one node, as /proc/zoneinfo reports it (counts in base pages)."""

    node: int
    name: str
    start_pfn: int
    spanned: int
    present: int
    managed: int
    free: int
    cma: int = 0

    @property
    def end_pfn(self) -> int:
        return self.start_pfn + self.spanned

    @property
    def label(self) -> str:
        return f"n{self.node} {self.name}"


def zoneinfo(text: str | None = None) -> list[Zone]:
    """Every zone with a non-empty span, in PFN order.

    Empty zones (spanned 0) print no start_pfn and are left out.
    """
    text = (PROC / "zoneinfo").read_text() if text is None else text
    zones: list[Zone] = []
    cur: dict[str, int | str] | None = None

    def flush() -> None:
        if cur and int(cur.get("spanned", 0)) > 0 and "start_pfn" in cur:
            zones.append(Zone(node=int(cur["node"]), name=str(cur["name"]),
                              start_pfn=int(cur["start_pfn"]), spanned=int(cur["spanned"]),
                              present=int(cur.get("present", 0)),
                              managed=int(cur.get("managed", 0)),
                              free=int(cur.get("free", 0)), cma=int(cur.get("cma", 0))))

    with lines(text, "/proc/zoneinfo") as src:
        for line in src:
            m = _ZONE_RE.match(line)
            if m:
                flush()
                cur = {"node": int(m.group(1)), "name": m.group(2)}
                continue
            if cur is None:
                continue
            parts = line.replace(":", " ").split()
            if len(parts) < 2:
                continue
            if parts[0] == "pages" and parts[1] == "free" and len(parts) >= 3:
                cur["free"] = int(parts[2])
            elif parts[0] in ("spanned", "present", "managed", "cma", "start_pfn") \
                    and parts[1].isascii() and parts[1].isdigit():
                cur[parts[0]] = int(parts[1])
        flush()
    return sorted(zones, key=lambda z: (z.start_pfn, z.node))


@dataclass(frozen=True)
class FreeArea:
    """Free blocks per order for one zone, from /proc/buddyinfo."""

    node: int
    zone: str
    counts: tuple[int, ...] = field(default_factory=tuple)

    @property
    def free_pages(self) -> int:
        return sum(n << order for order, n in enumerate(self.counts))

    def suitable_blocks(self, order: int) -> int:
        """Free blocks able to serve one allocation of ``order``, in units of that order."""
        return sum(n << (k - order) for k, n in enumerate(self.counts) if k >= order)

    def unusable_index(self, order: int) -> float:
        """Share of free memory that cannot serve an ``order`` allocation (0..1).

        The kernel's definition (mm/vmstat.c, unusable_free_index, shown in debugfs as
        extfrag/unusable_index): no free memory counts as all unusable.
        """
        free = self.free_pages
        if free == 0:
            return 1.0
        return (free - (self.suitable_blocks(order) << order)) / free


def buddyinfo(text: str | None = None) -> list[FreeArea]:
    text = (PROC / "buddyinfo").read_text() if text is None else text
    out = []
    with lines(text, "/proc/buddyinfo") as src:
        for line in src:
            parts = line.replace(",", " ").split()
            if len(parts) < 5 or parts[0] != "Node" or parts[2] != "zone":
                continue
            out.append(FreeArea(node=int(parts[1]), zone=parts[3],
                                counts=tuple(int(x) for x in parts[4:])))
    return out


def unusable_index_debugfs(path: Path = Path("/sys/kernel/debug/extfrag/unusable_index")
                           ) -> dict[tuple[int, str], tuple[float, ...]] | None:
    """The kernel's own unusable index per (node, zone) and order, or None without debugfs."""
    try:
        text = path.read_text()
    except OSError:
        return None
    out: dict[tuple[int, str], tuple[float, ...]] = {}
    for line in text.splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 5 and parts[0] == "Node" and parts[2] == "zone":
            out[(int(parts[1]), parts[3])] = tuple(float(x) for x in parts[4:])
    return out


def pageblock_order(text: str | None = None) -> int:
    """pageblock_order from /proc/pagetypeinfo ("Page block order: 9"); 9 if unreadable."""
    if text is None:
        try:
            with open(PROC / "pagetypeinfo") as f:  # root-only; first line is enough
                text = f.readline()
        except OSError:
            return DEFAULT_PAGEBLOCK_ORDER
    m = re.search(r"Page block order:\s*(\d+)", text)
    return int(m.group(1)) if m else DEFAULT_PAGEBLOCK_ORDER


def system_ram(text: str | None = None) -> list[tuple[int, int]]:
    """PFN ranges [first, end) of "System RAM" in /proc/iomem (top level and nested).

    Addresses read as zero without CAP_SYS_ADMIN; then the list is empty and callers treat
    every zone PFN as RAM.
    """
    if text is None:
        try:
            text = (PROC / "iomem").read_text()
        except OSError:
            return []
    out = []
    with lines(text, "/proc/iomem") as src:
        for line in src:
            rng, _, name = line.strip().partition(" : ")
            if name.strip() != "System RAM":
                continue
            lo, _, hi = rng.partition("-")
            first, last = int(lo, 16), int(hi, 16)
            if last == 0:
                return []  # addresses hidden from this reader
            out.append((first >> PAGE_SHIFT, (last + 1) >> PAGE_SHIFT))
    return sorted(out)
