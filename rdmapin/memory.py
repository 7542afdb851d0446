"""Page-size-aware memory to register: ``alloc`` (bytes) and ``empty`` (numpy arrays).

Anonymous mmap, aligned to the page size asked for:
  "4k"   base pages; MADV_NOHUGEPAGE so THP does not quietly change the backing
  "thp"  a 2 MiB-aligned range with MADV_HUGEPAGE (the kernel may still refuse: the
         backing obtained is measured from smaps and reported, never assumed)
  "2m"   MAP_HUGETLB | MAP_HUGE_2MB      "1g"   MAP_HUGETLB | MAP_HUGE_1GB
``node=`` binds with mbind(MPOL_BIND) before the first touch; ``dontfork=`` sets
MADV_DONTFORK. Pages are populated up front (MADV_POPULATE_WRITE, Linux 5.14; touching
each page before that), so a missing hugetlb page is an error here, not a SIGBUS later.

``path=`` maps a file or a device instead, MAP_SHARED: device DAX (/dev/daxN.M) with the
device's alignment (2 MiB, or 1 GiB where the namespace was made with it), a file on a DAX
file system, or an ordinary file (its page cache; the file is created or extended to fit).
What it is comes from rdmapin.backing (sysfs, statx, mountinfo) and is ``buf.backing``.

The result is a numpy array (``Buffer``, a uint8 ndarray subclass) whose memory lives until
the last view of it, and the last MR holding its export, is gone.
"""

from __future__ import annotations

import errno as _errno
import math
import mmap as _mmap
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from rdmapin import _lib, backing, explain, mm
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
    path: str | None = None  # the file or device mapped (alloc(path=...))
    page_size: int = PAGE  # the mapping's alignment (a devdax device's align)
    file: backing.FileBacking | None = None  # what backs it, and where that was read


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
          dontfork: bool = False, path: str | os.PathLike[str] | None = None,
          offset: int = 0) -> Buffer:
    """``nbytes`` of populated memory backed by ``pages`` (anonymous), or by the file or
    device DAX at ``path`` from ``offset``; see the module doc."""
    if path is not None:
        return _alloc_file(nbytes, os.fspath(path), offset, dontfork)
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


def _alloc_file(nbytes: int, path: str, offset: int, dontfork: bool) -> Buffer:
    """MAP_SHARED of a file or device-DAX; nothing stays mapped or open after an error."""
    what = f"alloc({nbytes} B, path={path!r}, offset={offset})"
    if nbytes <= 0 or offset < 0:
        raise AllocationError(_errno.EINVAL, what, hint="nbytes must be > 0, offset >= 0")
    try:
        # A missing device is an error, never a new file in /dev.
        create = not path.startswith("/dev/") or path.startswith("/dev/shm/")
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except OSError as e:
        raise AllocationError(e.errno or _errno.EIO, f"{what}: open",
                              hint="a devdax device (/dev/daxN.M, ndctl create-namespace -m "
                                   "devdax) or a file this user may write") from None
    try:
        file = backing.of_path(os.path.abspath(path))
        kind = file.kind if file else "unknown"
        align = PAGE
        if kind == "devdax":
            assert file is not None and file.size is not None
            align = file.align or PAGE
            if offset % align:
                raise AllocationError(_errno.EINVAL, f"{what}: {file.device} maps in "
                                      f"{align >> 10} KiB pages; the offset is not a multiple",
                                      hint=f"offset={offset - offset % align}")
            length = -(-nbytes // align) * align
            if offset + length > file.size:
                raise AllocationError(_errno.ENOMEM, f"{what}: {length} B (whole "
                                      f"{align >> 10} KiB pages) from {offset} exceed "
                                      f"{file.device}'s {file.size} B",
                                      hint="a smaller size, or a larger namespace")
        else:
            if offset % PAGE:
                raise AllocationError(_errno.EINVAL, f"{what}: offset not page-aligned",
                                      hint=f"offset={offset - offset % PAGE}")
            length = -(-nbytes // PAGE) * PAGE
            if os.fstat(fd).st_size < offset + length:
                os.ftruncate(fd, offset + length)
        try:
            m = _mmap.mmap(fd, length, _mmap.MAP_SHARED,
                           _mmap.PROT_READ | _mmap.PROT_WRITE, offset=offset)
        except OSError as e:
            raise AllocationError(e.errno or _errno.EIO, f"{what}: mmap of {length} B") from None
    except OSError as e:
        if not isinstance(e, AllocationError):
            e = AllocationError(e.errno or _errno.EIO, what)
        raise e from None
    finally:
        os.close(fd)
    raw = np.frombuffer(m, dtype=np.uint8)
    addr = int(raw.ctypes.data)
    try:
        if addr % align:
            raise AllocationError(_errno.EINVAL, f"{what}: mapped at {addr:#x}, not aligned "
                                  f"to the device's {align} B pages")
        for adv in (MADV_POPULATE_WRITE, MADV_DONTFORK if dontfork else None):
            if adv is None:
                continue
            try:
                m.madvise(adv)
            except OSError as e:
                if adv != MADV_POPULATE_WRITE or e.errno != _errno.EINVAL:
                    raise AllocationError(e.errno or _errno.EIO,
                                          f"{what}: madvise({adv})") from None
                raw[::PAGE] = raw[::PAGE]  # before 5.14: touch each page for write
    except AllocationError:
        del raw
        m.close()
        raise
    buf = raw[:nbytes].view(Buffer)
    buf._mapping = Mapping(addr, length, kind, kind, 0, None, dontfork, path=path,
                           page_size=align, file=file)
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
