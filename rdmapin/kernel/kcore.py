"""Page reference counts from /proc/kcore, to find pins made before the tracer started.

The kernel keeps no "pinned" page flag userspace can read (/proc/kpageflags has none); it
decides with page_maybe_dma_pinned(): a small folio counts each FOLL_PIN as
GUP_PIN_COUNTING_BIAS (1024) references in ``_refcount``; a large folio keeps a separate
``_pincount``. This reads those two fields straight from the struct page array (vmemmap),
in spans of nearby PFNs, with offsets from BTF. Root only; kernels without
CONFIG_PROC_KCORE cannot answer and say so. Mirrors include/linux/mm.h
(``folio_maybe_dma_pinned``) and fs/proc/kcore.c's ELF view of the direct map and vmemmap;
checked on 6.1 and 6.12 in the guests (the folio's ``_pincount`` offset differs: 88 vs 92).
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

import numpy as np

from rdmapin.kernel import btf as _btf
from rdmapin.kernel import kallsyms

KCORE = "/proc/kcore"
GUP_PIN_COUNTING_BIAS = 1024  # include/linux/mm.h
PT_LOAD = 1


@dataclass(frozen=True)
class _Segment:
    vaddr: int
    size: int
    offset: int


class Kcore:
    """Random access to kernel virtual memory through /proc/kcore's ELF segments."""

    def __init__(self) -> None:
        self.fd = os.open(KCORE, os.O_RDONLY | os.O_CLOEXEC)
        head = os.pread(self.fd, 64, 0)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            os.close(self.fd)
            raise OSError("not a 64-bit ELF /proc/kcore")
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        table = os.pread(self.fd, phentsize * phnum, phoff)
        segs = []
        for i in range(phnum):
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
                "<IIQQQQ", table, i * phentsize)
            if p_type == PT_LOAD and p_filesz:
                segs.append(_Segment(p_vaddr, p_filesz, p_offset))
        self.segments = sorted(segs, key=lambda s: s.vaddr)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, vaddr: int, size: int) -> bytes:
        for s in self.segments:
            if s.vaddr <= vaddr and vaddr + size <= s.vaddr + s.size:
                return os.pread(self.fd, size, s.offset + vaddr - s.vaddr)
        raise OSError(f"kernel address {vaddr:#x}+{size} is not in /proc/kcore")


# PFNs this close (in pages) share one read of the struct page array: a process's scattered
# pages cost a few reads of 64 pages' descriptors (4 KiB) each instead of one per page; the
# descriptors read in between are dropped.
GAP_PAGES = 64


class _StructPages:
    """The struct pages of sorted PFNs ``sp``, read in few preads of /proc/kcore; ``field``
    gathers one member of every one of them."""

    def __init__(self, k: Kcore, vmemmap: int, sp: np.ndarray, psize: int) -> None:
        breaks = np.flatnonzero(np.diff(sp.astype(np.int64)) > GAP_PAGES) + 1
        self.base = np.empty(len(sp), dtype=np.int64)  # each PFN's descriptor, in bytes read
        bufs: list[bytes] = []
        at = 0
        for c in np.split(np.arange(len(sp)), breaks):
            lo, hi = int(sp[c[0]]), int(sp[c[-1]])
            try:
                bufs.append(k.read(vmemmap + lo * psize, (hi - lo + 1) * psize))
            except OSError:  # the span crosses kcore segments: the pages one by one
                for i in c.tolist():
                    bufs.append(k.read(vmemmap + int(sp[i]) * psize, psize))
                    self.base[i] = at
                    at += psize
                continue
            self.base[c] = at + (sp[c].astype(np.int64) - lo) * psize
            at += (hi - lo + 1) * psize
        raw = np.frombuffer(b"".join(bufs), dtype=np.uint8).reshape(-1, psize)
        rows = self.base // psize
        # descriptors read in between dropped (a copy only when there were some)
        self.rows = raw if np.array_equal(rows, np.arange(len(raw))) else raw[rows]

    def field(self, offset: int, dtype: type) -> np.ndarray:
        width = np.dtype(dtype).itemsize
        return self.rows[:, offset:offset + width].copy().view(dtype)[:, 0]


def unavailable() -> str | None:
    """None when pin counts can be read here, else why not."""
    if not os.path.exists(KCORE):
        return "no /proc/kcore (CONFIG_PROC_KCORE off)"
    if not os.access(KCORE, os.R_OK):
        return "/proc/kcore needs root"
    b = _btf.vmlinux()
    if b is None or b.offsetof("page", "_refcount") is None:
        return "no BTF layout of struct page"
    if "vmemmap_base" not in kallsyms.lookup(("vmemmap_base",)):
        return "vmemmap_base not in /proc/kallsyms"
    return None


@functools.cache
def _layout() -> tuple[int, int, int | None, int | None, int | None]:
    """struct page's size and the offsets of _refcount, _mapcount, compound_head and
    folio._pincount, from BTF: fixed for the running kernel, so looked up once (a BTF member
    walk costs milliseconds, and a scan of many processes asks for every one)."""
    b = _btf.vmlinux()
    assert b is not None
    ref_off = b.offsetof("page", "_refcount")
    assert ref_off is not None
    return (b.sizeof("page") or 64, ref_off, b.offsetof("page", "_mapcount"),
            b.offsetof("page", "compound_head"), b.offsetof("folio", "_pincount"))


def pinned(pfns: np.ndarray, compound: np.ndarray | None = None) -> np.ndarray:
    """Bool per PFN: the kernel's page_maybe_dma_pinned() for that page's folio.

    ``compound`` marks PFNs in large folios (kpageflags COMPOUND_HEAD/TAIL); for those the
    head's ``_pincount`` decides, which this reads from the folio's second struct page.
    """
    psize, ref_off, map_off, head_off, pin_off = _layout()
    k = Kcore()
    try:
        base_ptr = kallsyms.lookup(("vmemmap_base",))["vmemmap_base"]
        vmemmap, = struct.unpack("<Q", k.read(base_ptr, 8))
        pfns = np.asarray(pfns, dtype=np.uint64)
        out = np.zeros(len(pfns), dtype=bool)
        if not len(pfns):
            return out
        order = np.argsort(pfns, kind="stable")
        sp = pfns[order]
        pages = _StructPages(k, vmemmap, sp, psize)
        refs = pages.field(ref_off, np.int32)
        maps = (pages.field(map_off, np.int32) + 1 if map_off is not None
                else np.zeros(len(sp), dtype=np.int32))
        heads = (pages.field(head_off, np.uint64) if head_off is not None
                 else np.zeros(len(sp), dtype=np.uint64))
        # References beyond the mappings: a libc page mapped by 2000 processes is not pinned
        # (page_maybe_dma_pinned's known false positive); an MR's page is, by 1024 per pin.
        small = (refs - np.maximum(maps, 0)) >= GUP_PIN_COUNTING_BIAS
        res = small.copy()
        if compound is not None and pin_off is not None and np.asarray(compound).any():
            comp = np.asarray(compound, dtype=bool)[order]
            # compound_head: bit 0 set on tail pages, pointing at the head's struct page
            head_ptr = np.where(heads & np.uint64(1), heads - np.uint64(1),
                                np.uint64(vmemmap) + sp * np.uint64(psize))
            # one read per folio, not per page (a 2 MiB folio is 512 pages); sorted with
            # kind="stable", not np.unique's default (numpy 2.4's AVX2 argsort misorders
            # under QEMU TCG, see README)
            hp = head_ptr[comp]
            by = np.argsort(hp, kind="stable")
            first = np.concatenate(([True], hp[by][1:] != hp[by][:-1]))
            head_pinned = np.array([struct.unpack("<i", k.read(h + pin_off, 4))[0] > 0
                                    for h in hp[by][first].tolist()], dtype=bool)
            got = np.empty(len(hp), dtype=bool)
            got[by] = head_pinned[np.cumsum(first) - 1]
            res[comp] = got
        out[order] = res
        return out
    finally:
        k.close()
