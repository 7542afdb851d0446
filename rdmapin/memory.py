"""Page-size-aware memory to register: ``alloc`` (bytes) and ``empty`` (numpy arrays).

Anonymous mmap, aligned to the page size asked for:
  "4k"   base pages; MADV_NOHUGEPAGE so THP does not quietly change the backing
  "thp"  a 2 MiB-aligned range with MADV_HUGEPAGE (the kernel may still refuse: the
         backing obtained is measured from smaps and reported, never assumed)
  "2m"   MAP_HUGETLB | MAP_HUGE_2MB      "1g"   MAP_HUGETLB | MAP_HUGE_1GB
``node=`` binds with mbind(MPOL_BIND) before the first touch; ``dontfork=`` sets
MADV_DONTFORK. Pages are populated up front (MADV_POPULATE_WRITE, Linux 5.14; touching
each page before that), so a missing hugetlb page is an error here, not a SIGBUS later.

The result is a numpy array (``Buffer``, a uint8 ndarray subclass) whose memory lives until
the last view of it, and the last MR holding its export, is gone.
"""

from __future__ import annotations

import errno as _errno
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rdmapin import _lib, explain, mm
from rdmapin.errors import AllocationError, RdmapinOSError
from rdmapin.kernel import maps

PAGE = mm.PAGE_SIZE
MAP_HUGETLB = 0x40000
MAP_HUGE_SHIFT = 26
MADV_DONTFORK = 10
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_POPULATE_WRITE = 23

# pages= -> (page size, mmap flags, madvise)
KINDS: dict[str, tuple[int, int, int | None]] = {
    "4k": (PAGE, 0, MADV_NOHUGEPAGE),
    "thp": (2 << 20, 0, MADV_HUGEPAGE),
    "2m": (2 << 20, MAP_HUGETLB | 21 << MAP_HUGE_SHIFT, None),
    "1g": (1 << 30, MAP_HUGETLB | 30 << MAP_HUGE_SHIFT, None),
}


@dataclass
class Mapping:
    """One mmap made by alloc: what was asked for and what the kernel actually gave."""

    addr: int
    length: int
    pages: str  # asked for: "4k" | "thp" | "2m" | "1g"
    backing: str  # obtained: "4k" | "thp" | "thp-partial" | "2m" | "1g"
    thp_bytes: int  # AnonHugePages of the range (smaps) right after populating
    node: int | None
    dontfork: bool


class Buffer(np.ndarray):
    """A uint8 (or, from ``empty``, any dtype) array over an rdmapin mapping."""

    _mapping: Mapping | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self._mapping = getattr(obj, "_mapping", None)

    @property
    def mapping(self) -> Mapping | None:
        """The mapping this array lies in (None for a copy made elsewhere)."""
        m = self._mapping
        if m is None or not m.addr <= self.ctypes.data < m.addr + m.length:
            return None
        return m

    @property
    def addr(self) -> int:
        return int(self.ctypes.data)

    @property
    def backing(self) -> str | None:
        m = self.mapping
        return m.backing if m else None

    @property
    def pages(self) -> str | None:
        m = self.mapping
        return m.pages if m else None


def thp_bytes(addr: int, length: int) -> int:
    """AnonHugePages of the smaps entries inside [addr, addr+length), capped at length."""
    return min(maps.total(maps.covering("self", addr, length), "AnonHugePages"), length)


def _populate(ptr: Any, addr: int, length: int, page: int) -> int:
    """Fault every page in now; 0 or errno."""
    rc = _lib.madvise(ptr, length, MADV_POPULATE_WRITE)
    if rc != -_errno.EINVAL:
        return -rc
    # Kernel before 5.14 (no MADV_POPULATE_WRITE): write one byte per page.
    view = np.frombuffer(_lib.buffer(_lib.char_p(ptr), length), dtype=np.uint8)
    view[::page] = 0
    return 0


def alloc(nbytes: int, pages: str = "4k", *, node: int | None = None,
          dontfork: bool = False) -> Buffer:
    """``nbytes`` of populated anonymous memory backed by ``pages``; see the module doc."""
    if pages not in KINDS:
        raise ValueError(f"pages={pages!r}: expected one of {', '.join(KINDS)}")
    size, flags, advice = KINDS[pages]
    hugetlb = bool(flags & MAP_HUGETLB)
    if nbytes <= 0:
        raise AllocationError(_errno.EINVAL, f"alloc({nbytes} B)", hint="nbytes must be > 0")
    if hugetlb and nbytes % size:
        up = -(-nbytes // size) * size
        raise AllocationError(_errno.EINVAL,
                              f"alloc({nbytes} B, pages={pages!r}): hugetlb length is not a "
                              f"multiple of the {size >> 20} MiB page size",
                              hint=f"ask for {up} B, or use empty(), which rounds up")
    length = -(-nbytes // PAGE) * PAGE
    if hugetlb and node is not None:
        free = explain.hugepages_free(size).get(node, 0)
        if free * size < length:
            raise explain.hugepages_error(_errno.ENOMEM, size, length, node,
                                          f"alloc({length} B, pages={pages!r}, node={node})")
    ptr, err = _lib.mmap(length, size if pages == "thp" else 0, flags)
    if ptr is None:
        what = f"mmap({length} B, pages={pages!r})"
        if hugetlb and err == _errno.ENOMEM:
            raise explain.hugepages_error(err, size, length, node, what)
        raise AllocationError(err, what)
    addr = _lib.address_of(ptr)
    try:
        for adv in (advice, MADV_DONTFORK if dontfork else None):
            if adv is not None and (rc := _lib.madvise(ptr, length, adv)):
                raise AllocationError(-rc, f"madvise({addr:#x}, {length}, {adv})")
        if node is not None:
            mm.mbind(addr, length, node)
        err = _populate(ptr, addr, length, PAGE)
        if err:
            what = f"populating {length} B of pages={pages!r}" + (
                f" on node {node}" if node is not None else "")
            if hugetlb:
                raise explain.hugepages_error(err, size, length, node, what)
            raise AllocationError(err, what, hint="out of memory on that node?")
    except RdmapinOSError:
        _lib.munmap(ptr, length)
        raise
    thp = thp_bytes(addr, length) if pages != "4k" and not hugetlb else 0
    if hugetlb:
        backing = pages
    elif pages == "thp":
        backing = "thp" if thp >= length - length % size and thp else (
            "thp-partial" if thp else "4k")
    else:
        backing = "4k"
    owned = _lib.gc(_lib.char_p(ptr), lambda p, n=length: _lib.munmap(p, n))
    raw = np.frombuffer(_lib.buffer(owned, length), dtype=np.uint8)[:nbytes]
    buf = raw.view(Buffer)
    buf._mapping = Mapping(addr, length, pages, backing, thp, node, dontfork)
    return buf


def empty(shape: int | tuple[int, ...], dtype: Any = np.float64, *, pages: str = "4k",
          node: int | None = None, dontfork: bool = False) -> Buffer:
    """An uninitialised (zero-filled) array of ``shape``/``dtype`` on ``pages`` backing;
    the mapping is rounded up to whole pages of that size."""
    dt = np.dtype(dtype)
    shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape_t) * dt.itemsize
    size = KINDS[pages][0] if pages in KINDS else PAGE
    buf = alloc(max(-(-nbytes // size), 1) * size, pages, node=node, dontfork=dontfork)
    return buf[:nbytes].view(dt).reshape(shape_t)  # type: ignore[return-value]
