"""/proc/kpageflags read for an array of PFNs, and its KPF_* bits decoded with numpy.

Bit numbers are the kernel's (include/uapi/linux/kernel-page-flags.h, and the kernel-only
bits 32+ from include/linux/kernel-page-flags.h), as fs/proc/page.c's stable_page_flags()
sets them; checked on 6.1, 6.12 (whose KPF_KSM is wrong: see ksm_bit_on_every_anon_page)
and 6.18. Reads follow the PFNs in their given
(virtual) order, one pread per physically contiguous run; when the layout is fragmented
the PFNs are sorted and coalesced first, so the syscall count stays near the number of
physical extents rather than the number of pages.
"""

from __future__ import annotations

import enum
import errno
import functools
import mmap
import os
from collections.abc import Callable

import numpy as np

from rdmapin.errors import RdmapinOSError
from rdmapin.kernel import pagemap
from rdmapin.kernel.arch import PAGE_SIZE

PATH = "/proc/kpageflags"
ENTRY_BYTES = 8
# A gap of up to this many PFNs between two runs is read through rather than paying
# another syscall (~1-2 us from Python vs tens of ns per extra entry in the kernel).
MERGE_GAP = 32
BUCKET_SHIFT = 4
BUCKET = 1 << BUCKET_SHIFT


class KPF(enum.IntEnum):
    """Bit positions in a /proc/kpageflags entry."""

    LOCKED = 0
    ERROR = 1
    REFERENCED = 2
    UPTODATE = 3
    DIRTY = 4
    LRU = 5
    ACTIVE = 6
    SLAB = 7
    WRITEBACK = 8
    RECLAIM = 9
    BUDDY = 10
    MMAP = 11
    ANON = 12
    SWAPCACHE = 13
    SWAPBACKED = 14
    COMPOUND_HEAD = 15
    COMPOUND_TAIL = 16
    HUGE = 17
    UNEVICTABLE = 18
    HWPOISON = 19
    NOPAGE = 20
    KSM = 21
    THP = 22
    OFFLINE = 23
    ZERO_PAGE = 24
    IDLE = 25
    PGTABLE = 26
    RESERVED = 32
    MLOCKED = 33
    MAPPEDTODISK = 34
    PRIVATE = 35
    PRIVATE_2 = 36
    OWNER_PRIVATE = 37
    ARCH = 38
    UNCACHED = 39
    SOFTDIRTY = 40
    ARCH_2 = 41


@functools.cache
def ksm_bit_on_every_anon_page() -> bool:
    """Does this kernel set KPF_KSM on every anonymous page (6.10 up to the fix)?

    6.10's rewrite of ``stable_page_flags()`` (fs/proc/page.c) tests
    ``mapping & PAGE_MAPPING_KSM``; PAGE_MAPPING_KSM is ANON|MOVABLE, so the test is true
    for any anonymous folio, and every anon page reads as KSM (Debian's 6.12.118 does;
    6.1 and 6.18 do not). Probed, not assumed: one private page of our own that KSM was
    never asked to merge (no MADV_MERGEABLE) is faulted in and its flags read. On such a
    kernel a real KSM page cannot be told from an anonymous one; :func:`read` clears the
    bit so both count as anonymous. Root only (pagemap hides PFNs otherwise): False then.
    """
    page = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        page[0] = 1
        addr = np.frombuffer(page, dtype=np.uint8).ctypes.data
        try:
            pfn = int(pagemap.pfns(pagemap.read("self", addr, PAGE_SIZE))[0])
        except RdmapinOSError:
            return False
        if pfn == 0:
            return False
        try:
            flags = int(_read_raw(np.array([pfn], dtype=np.uint64))[0])
        except RdmapinOSError:
            return False
        return bool(flags >> KPF.ANON & 1 and flags >> KPF.KSM & 1)
    finally:
        page.close()


_KSM = np.uint64(1 << int(KPF.KSM))


def bit(flags: np.ndarray, kpf: KPF) -> np.ndarray:
    """Boolean array: is ``kpf`` set in each entry."""
    return ((flags >> np.uint64(int(kpf))) & np.uint64(1)).astype(bool)


def mask(*kpfs: KPF) -> np.uint64:
    m = 0
    for k in kpfs:
        m |= 1 << int(k)
    return np.uint64(m)


def names(value: int) -> list[str]:
    """The KPF names set in one entry (for people reading a single page)."""
    return [k.name for k in KPF if value >> int(k) & 1]


def _runs(pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start PFN and length of each run of consecutive PFNs (input order), gaps merged."""
    if len(pfns) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    p = pfns.astype(np.int64, copy=False)
    step = np.diff(p)
    # A new read starts wherever the next PFN is not within MERGE_GAP ahead of this one.
    brk = np.flatnonzero((step <= 0) | (step > MERGE_GAP)) + 1
    starts_i = np.concatenate(([0], brk))
    ends_i = np.concatenate((brk, [len(p)])) - 1
    starts = p[starts_i]
    lens = p[ends_i] - starts + 1
    return starts, lens


def _read_runs(fd: int, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated kpageflags entries of every run; entries past the end of memory are 0."""
    total = int(lens.sum())
    out = np.zeros(total, dtype=np.uint64)
    view = memoryview(out).cast("B")
    pos = 0
    pread = os.preadv
    for s, n in zip(starts.tolist(), lens.tolist(), strict=True):
        nbytes = n * ENTRY_BYTES
        got = pread(fd, [view[pos:pos + nbytes]], s * ENTRY_BYTES)
        if got < 0:
            raise RdmapinOSError(errno.EIO, f"read of {PATH} at PFN {s} failed")
        pos += nbytes
    return out


def _read_in_order(fd: int, pfns: np.ndarray) -> np.ndarray:
    """One read per (gap-merged) run of PFNs in the given order: for few or sparse PFNs."""
    starts, lens = _runs(pfns)
    flat = _read_runs(fd, starts, lens)
    if len(flat) == len(pfns):  # runs were exact: the reads are already in page order
        return flat
    run_base = np.concatenate(([0], np.cumsum(lens)[:-1]))
    p = pfns.astype(np.int64, copy=False)
    new = np.ones(len(p), dtype=bool)
    new[1:] = (np.diff(p) <= 0) | (np.diff(p) > MERGE_GAP)
    run_of = np.cumsum(new) - 1
    return flat[run_base[run_of] + (p - starts[run_of])]


def _read_by_bucket(fd: int, pfns: np.ndarray) -> np.ndarray:
    """Read the PFNs' 16-entry buckets in physical order, merged into extents.

    Pages of a region are scattered in virtual order but clustered physically; reading
    touched buckets in PFN order needs a fraction of the syscalls a virtual-order walk
    needs, without sorting: a bucket table (span / 16 entries) maps each PFN to its slot.
    """
    b = (pfns >> np.uint64(BUCKET_SHIFT)).astype(np.int64)
    b0 = int(b.min())
    rel = b - b0
    touched = np.flatnonzero(np.bincount(rel))
    new = np.ones(len(touched), dtype=bool)
    new[1:] = np.diff(touched) > MERGE_GAP // BUCKET
    firsts = touched[new]
    lasts = touched[np.append(np.flatnonzero(new)[1:] - 1, len(touched) - 1)]
    lens = (lasts - firsts + 1) * BUCKET
    flat = _read_runs(fd, (firsts + b0) * BUCKET, lens)
    base = np.concatenate(([0], np.cumsum(lens)[:-1]))
    run_of = np.cumsum(new) - 1
    slot = np.zeros(int(touched[-1]) + 1, dtype=np.int64)
    slot[touched] = base[run_of] + (touched - firsts[run_of]) * BUCKET
    return flat[slot[rel] + (pfns & np.uint64(BUCKET - 1)).astype(np.int64)]


def read(pfns: np.ndarray) -> np.ndarray:
    """kpageflags entry (uint64) for each PFN in ``pfns``, in the same order.

    Needs root (CAP_SYS_ADMIN): the file is mode 0400. Repeated PFNs (the zero page, KSM)
    are fine. Cost: O(pages) plus one pread per physical extent. KPF_KSM is cleared where
    the kernel sets it on every anonymous page (:func:`ksm_bit_on_every_anon_page`).
    """
    flags = _read_raw(pfns)
    if len(flags) and ksm_bit_on_every_anon_page():
        flags &= ~_KSM
    return flags


def _read_raw(pfns: np.ndarray) -> np.ndarray:
    pfns = np.ascontiguousarray(pfns, dtype=np.uint64)
    if len(pfns) == 0:
        return np.empty(0, dtype=np.uint64)
    try:
        fd = os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise RdmapinOSError(e.errno or errno.EACCES, f"open {PATH}",
                             hint="page flags need root (CAP_SYS_ADMIN)") from e
    try:
        n = len(pfns)
        if n < 64:
            return _read_in_order(fd, pfns)
        breaks = int(np.count_nonzero(pfns[1:] - pfns[:-1] != np.uint64(1)))
        span = (int(pfns.max()) - int(pfns.min())) >> BUCKET_SHIFT
        if breaks * 256 < n or span > 4 * n:  # long runs (THP, hugetlb) or widely spread
            return _read_in_order(fd, pfns)
        return _read_by_bucket(fd, pfns)
    finally:
        os.close(fd)


def read_range(first_pfn: int, count: int) -> np.ndarray:
    """Entries for the PFN range [first_pfn, first_pfn + count): folio boundary look-ups."""
    fd = os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = np.zeros(count, dtype=np.uint64)
        view = memoryview(out).cast("B")
        os.preadv(fd, [view], first_pfn * ENTRY_BYTES)
    finally:
        os.close(fd)
    if ksm_bit_on_every_anon_page():
        out &= ~_KSM
    return out


# A whole-memory scan reads 8 MiB of entries at a time: a progress tick per 4 GiB of RAM.
CHUNK_PFNS = 1 << 20


def read_all(end_pfn: int,
             progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """kpageflags of PFNs [0, end_pfn) in one sequential pass (8 MiB reads).

    The kernel fills entries past max_pfn with nothing: the read stops short and the rest
    stays KPF_NOPAGE.
    """
    out = np.full(end_pfn, np.uint64(1 << KPF.NOPAGE), dtype=np.uint64)
    view = memoryview(out).cast("B")
    try:
        fd = os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise RdmapinOSError(e.errno or 13, f"open {PATH}",
                             hint="the physical map needs root (kpageflags is mode 0400)") from e
    try:
        pos, total = 0, end_pfn * 8
        while pos < total:
            n = os.preadv(fd, [view[pos:min(pos + CHUNK_PFNS * 8, total)]], pos)
            if n <= 0:
                break
            pos += n
            if progress:
                progress(pos // 8, end_pfn)
    finally:
        os.close(fd)
    if ksm_bit_on_every_anon_page():
        out &= ~_KSM
    return out
