"""Group a region's base pages into the folios that back them, and classify each folio.

A folio starts at every page that is not a compound tail or that does not follow the
previous page physically. Folios cut by the region's edges (or mapped piecemeal) are
completed with a few extra kpageflags reads around the boundary, so sizes are the real
folio sizes, not the part that happens to be inside the range. Classification goes
through a table indexed by kpageflags bits 12-24, one gather per folio.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from rdmapin.kernel import kpageflags as kpf
from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.kernel.kpageflags import KPF

# Exclusive backing categories; the table below assigns one to every flag combination.
# devdax and fsdax are ZONE_DEVICE pages, which kpageflags reports as NOPAGE (fs/proc/page.c:
# pfn_to_online_page() has no page for them): the region report assigns them by their VMA.
CATEGORIES = ("4k", "thp_2m", "thp_other", "hugetlb_2m", "hugetlb_1g", "hugetlb_other",
              "zero", "ksm", "shmem", "file", "devdax", "fsdax", "other")
CAT = {name: i for i, name in enumerate(CATEGORIES)}
PMD_PAGES = 512
MAX_LOOKUPS = 4096  # boundary folios completed exactly; beyond that, their in-range part
CODE_SHIFT = int(KPF.ANON)  # bits 12 (ANON) .. 24 (ZERO_PAGE)
CODE_BITS = int(KPF.ZERO_PAGE) - CODE_SHIFT + 1
TAIL = np.uint64(1 << int(KPF.COMPOUND_TAIL))


def _c(k: KPF) -> int:
    return 1 << (int(k) - CODE_SHIFT)


@functools.cache
def _table() -> np.ndarray:
    """Category for each 13-bit code; THP means thp_2m and HUGE hugetlb_2m until sized."""
    code = np.arange(1 << CODE_BITS)

    def has(k: KPF) -> np.ndarray:
        return (code & _c(k)) != 0

    anon, compound = has(KPF.ANON), has(KPF.COMPOUND_HEAD) | has(KPF.COMPOUND_TAIL)
    cat = np.full(len(code), CAT["other"], dtype=np.int8)
    for sel, name in (  # later rules win
        (anon & ~compound, "4k"),
        (~anon & has(KPF.SWAPBACKED), "shmem"),
        (~anon & ~has(KPF.SWAPBACKED), "file"),
        (anon & has(KPF.THP), "thp_2m"),
        (has(KPF.HUGE), "hugetlb_2m"),
        (has(KPF.KSM), "ksm"),
        (has(KPF.ZERO_PAGE), "zero"),
    ):
        cat[sel] = CAT[name]
    return cat


def codes(flags: np.ndarray) -> np.ndarray:
    """The kpageflags bits that decide the backing, packed into uint16."""
    return ((flags >> np.uint64(CODE_SHIFT)) & np.uint64((1 << CODE_BITS) - 1)).astype(np.uint16)


@dataclass
class Folios:
    """Per-page folio index and per-folio head PFN, size (pages), category and flags."""

    page_folio: np.ndarray  # int64 per present page: index into the folio arrays
    in_range: np.ndarray  # int64 pages of each folio segment inside the range
    head: np.ndarray  # uint64 head PFN per folio segment
    nr_pages: np.ndarray  # int64 folio size in base pages
    category: np.ndarray  # int8 index into CATEGORIES
    head_flags: np.ndarray  # uint64 kpageflags of the head page
    distinct: np.ndarray  # bool: first segment of its folio (duplicates are shared mappings)


def _extent(pfn: int) -> tuple[int, int, int]:
    """(head pfn, folio pages, head flags) of the non-hugetlb compound folio holding ``pfn``."""
    lo = max(pfn - PMD_PAGES + 1, 0)
    back = kpf.read_range(lo, pfn - lo + 1)
    heads = np.flatnonzero(kpf.bit(back, KPF.COMPOUND_HEAD))
    if len(heads) == 0:
        return pfn, 1, int(back[-1])
    head = lo + int(heads[-1])
    fwd = kpf.read_range(head + 1, PMD_PAGES)
    not_tail = np.flatnonzero(~kpf.bit(fwd, KPF.COMPOUND_TAIL))
    nr = 1 + (int(not_tail[0]) if len(not_tail) else PMD_PAGES)
    return head, nr, int(back[heads[-1]])


def group(pfns: np.ndarray, flags: np.ndarray, exclusive: np.ndarray,
          hugetlb_pages: np.ndarray | None) -> Folios:
    """Folios of the present pages ``pfns`` (virtual order) with their ``flags``.

    ``exclusive`` is pagemap's exclusively-mapped bit per page (no duplicate possible),
    ``hugetlb_pages`` the hugetlb page size in base pages of each page's VMA (None: no
    hugetlb VMA in the range).
    """
    n = len(pfns)
    if n == 0:
        z = np.empty(0, dtype=np.int64)
        return Folios(z, z, np.empty(0, np.uint64), z, np.empty(0, np.int8),
                      np.empty(0, np.uint64), np.empty(0, bool))
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(flags[1:] & TAIL, TAIL, out=new[1:])
    new[1:] |= pfns[1:] != pfns[:-1] + np.uint64(1)
    starts = np.flatnonzero(new)
    if len(starts) == n:  # every page its own folio: skip the index arithmetic
        page_folio = np.arange(n)
        in_range = np.ones(n, dtype=np.int64)
        head, hflags = pfns.copy(), flags.copy()
    else:
        page_folio = np.cumsum(new) - 1
        in_range = np.diff(np.append(starts, n))
        head, hflags = pfns[starts], flags[starts]
    nr = in_range.copy()
    code = codes(hflags)
    cat = _table()[code]
    compound = (code & (_c(KPF.COMPOUND_HEAD) | _c(KPF.COMPOUND_TAIL))) != 0
    # Complete folios that start on a tail (head outside the range) or run past its end;
    # hugetlb folios take their size from the VMA (naturally aligned).
    fix = compound & ((code & _c(KPF.COMPOUND_TAIL)) != 0)
    fix[-1] |= compound[-1]
    if hugetlb_pages is not None:
        hp = hugetlb_pages[starts]
        hidx = np.flatnonzero(compound & (hp > 1))
        if len(hidx):
            hpn = hp[hidx].astype(np.uint64)
            head[hidx] = head[hidx] - head[hidx] % hpn
            nr[hidx] = hp[hidx]
            hflags[hidx] = kpf.read(head[hidx])
            fix[hidx] = False
            size = hp[hidx] * PAGE_SIZE
            cat[hidx] = np.where(size == 2 << 20, CAT["hugetlb_2m"],
                                 np.where(size == 1 << 30, CAT["hugetlb_1g"],
                                          CAT["hugetlb_other"]))
    for i in np.flatnonzero(fix)[:MAX_LOOKUPS].tolist():
        head[i], nr[i], hflags[i] = _extent(int(head[i]))
    thp = cat == CAT["thp_2m"]
    cat[thp & (nr != PMD_PAGES)] = CAT["thp_other"]
    distinct = np.ones(len(starts), dtype=bool)
    shared = ~exclusive[starts]
    if shared.any():
        sidx = np.flatnonzero(shared)
        _, first = np.unique(head[sidx], return_index=True)
        distinct[sidx] = False
        distinct[sidx[first]] = True
    return Folios(page_folio, in_range, head, nr, cat, hflags, distinct)
