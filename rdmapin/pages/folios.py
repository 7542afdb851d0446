"""Group a region's base pages into the folios that back them, and classify each folio.

A folio starts at every page that is not a compound tail or that does not follow the
previous page physically. Folios cut by the region's edges (or mapped piecemeal) are
completed with a few extra kpageflags reads around the boundary, so sizes are the real
folio sizes, not the part that happens to be inside the range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rdmapin.pages import kpageflags as kpf
from rdmapin.pages.kpageflags import KPF

# Exclusive backing categories, in the order of precedence used to assign them.
CATEGORIES = ("4k", "thp_2m", "thp_other", "hugetlb_2m", "hugetlb_1g", "hugetlb_other",
              "zero", "ksm", "shmem", "file", "other")
PMD_PAGES = 512
MAX_LOOKUPS = 4096  # boundary folios completed exactly; beyond that, their in-range part


@dataclass
class Folios:
    """Per-page folio index and per-folio head PFN, size (pages), category and flags."""

    page_folio: np.ndarray  # int64 per present page: index into the folio arrays
    head: np.ndarray  # uint64 head PFN per folio segment
    nr_pages: np.ndarray  # int64 folio size in base pages
    category: np.ndarray  # int8 index into CATEGORIES
    head_flags: np.ndarray  # uint64 kpageflags of the head page
    distinct: np.ndarray  # bool: first segment of its folio (duplicates are shared mappings)


def _extent(pfn: int, hugetlb_pages: int) -> tuple[int, int, int]:
    """(head pfn, folio pages, head flags) of the compound folio containing ``pfn``."""
    if hugetlb_pages > 1:
        head = pfn - pfn % hugetlb_pages
        return head, hugetlb_pages, int(kpf.read_range(head, 1)[0])
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


def _categorise(flags: np.ndarray, nr_pages: np.ndarray, hugetlb_bytes: np.ndarray,
                page_size: int) -> np.ndarray:
    bit = kpf.bit
    cat = np.full(len(flags), CATEGORIES.index("other"), dtype=np.int8)
    anon = bit(flags, KPF.ANON)
    compound = bit(flags, KPF.COMPOUND_HEAD) | bit(flags, KPF.COMPOUND_TAIL)
    rules = [  # later rules win
        (anon & ~compound, "4k"),
        (~anon & bit(flags, KPF.SWAPBACKED), "shmem"),
        (~anon & ~bit(flags, KPF.SWAPBACKED), "file"),
        (anon & bit(flags, KPF.THP) & (nr_pages != PMD_PAGES), "thp_other"),
        (anon & bit(flags, KPF.THP) & (nr_pages == PMD_PAGES), "thp_2m"),
        (bit(flags, KPF.HUGE), "hugetlb_other"),
        (bit(flags, KPF.HUGE) & (hugetlb_bytes == 2 << 20), "hugetlb_2m"),
        (bit(flags, KPF.HUGE) & (hugetlb_bytes == 1 << 30), "hugetlb_1g"),
        (bit(flags, KPF.KSM), "ksm"),
        (bit(flags, KPF.ZERO_PAGE), "zero"),
    ]
    for sel, name in rules:
        cat[sel] = CATEGORIES.index(name)
    return cat


def group(pfns: np.ndarray, flags: np.ndarray, exclusive: np.ndarray,
          hugetlb_pages: np.ndarray, page_size: int) -> Folios:
    """Folios of the present pages ``pfns`` (virtual order) with their ``flags``.

    ``exclusive`` is pagemap's exclusively-mapped bit per page (no duplicate possible),
    ``hugetlb_pages`` the hugetlb page size in base pages of each page's VMA (1 if none).
    """
    n = len(pfns)
    if n == 0:
        z = np.empty(0, dtype=np.int64)
        return Folios(z, np.empty(0, np.uint64), z, np.empty(0, np.int8),
                      np.empty(0, np.uint64), np.empty(0, bool))
    tail = kpf.bit(flags, KPF.COMPOUND_TAIL)
    new = np.ones(n, dtype=bool)
    new[1:] = ~tail[1:] | (pfns[1:] != pfns[:-1] + np.uint64(1))
    starts = np.flatnonzero(new)
    page_folio = np.cumsum(new) - 1
    nr = np.diff(np.append(starts, n))
    head = pfns[starts].copy()
    hflags = flags[starts].copy()
    compound = kpf.bit(hflags, KPF.COMPOUND_HEAD) | kpf.bit(hflags, KPF.COMPOUND_TAIL)
    hp = hugetlb_pages[starts]
    # Complete folios that start on a tail (head outside the range) or run past its end,
    # and hugetlb folios (size known from the VMA, not from what is mapped here).
    fix = compound & (kpf.bit(hflags, KPF.COMPOUND_TAIL) | (hp > 1))
    if compound[-1]:
        fix[-1] = True
    idx = np.flatnonzero(fix)
    hidx = idx[hp[idx] > 1]
    if len(hidx):  # hugetlb: vectorised, naturally aligned
        hpn = hp[hidx].astype(np.uint64)
        head[hidx] = pfns[starts[hidx]] - pfns[starts[hidx]] % hpn
        nr[hidx] = hp[hidx]
        hflags[hidx] = kpf.read(head[hidx])
    for i in idx[hp[idx] <= 1][:MAX_LOOKUPS].tolist():
        h, size, hf = _extent(int(pfns[starts[i]]), 1)
        head[i], nr[i], hflags[i] = h, size, hf
    distinct = np.ones(len(starts), dtype=bool)
    shared = ~exclusive[starts]
    if shared.any():
        sidx = np.flatnonzero(shared)
        _, first = np.unique(head[sidx], return_index=True)
        distinct[sidx] = False
        distinct[sidx[first]] = True
    hugetlb_bytes = hp.astype(np.int64) * page_size
    cat = _categorise(hflags, nr, hugetlb_bytes, page_size)
    return Folios(page_folio, head, nr, cat, hflags, distinct)
