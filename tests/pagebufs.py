"""Real buffers with a chosen backing, for the page-tracker tests (host and VM).

Python's ``mmap.mmap(-1, n)`` is MAP_SHARED (shmem); these helpers make the private
anonymous, THP, hugetlb and file mappings the tests need, aligned where it matters.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

PAGE = os.sysconf("SC_PAGE_SIZE")
HUGE_2M = 2 << 20
MAP_HUGETLB = 0x40000
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MAP_FAILED = ctypes.c_void_p(-1).value


class Buffer:
    """A private mapping at ``addr`` of ``length`` bytes (``align``-aligned), unmapped on close."""

    def __init__(self, length: int, *, align: int = PAGE, flags: int = 0,
                 advice: int | None = None) -> None:
        self.length = length
        self._span = length + align
        base = libc.mmap(None, self._span, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags, -1, 0)
        if base in (None, MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap {length} B flags {flags:#x}")
        self._base = base
        self.addr = base + (-base) % align
        if advice is not None:
            assert libc.madvise(self.addr, length, advice) == 0, ctypes.get_errno()
        # Trim the slack so the VMA is exactly [addr, addr + length): smaps checks need it.
        if self.addr > base:
            libc.munmap(base, self.addr - base)
        tail = base + self._span - (self.addr + length)
        if tail:
            libc.munmap(self.addr + length, tail)
        self.view = np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(self.addr))

    def touch(self, write: bool = True) -> None:
        """Fault every page in (write) or map the zero page (read)."""
        if write:
            self.view[::PAGE] = 1
        else:
            int(self.view[::PAGE].sum())

    def close(self) -> None:
        if self.addr:
            libc.munmap(self.addr, self.length)
            self.addr = 0

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def thp_mode() -> str:
    text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    return text[text.index("[") + 1:text.index("]")]


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (longest mount-point prefix)."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, typ, *_ = line.split()
        if str(path).startswith(mnt) and len(mnt) > len(best):
            best, kind = mnt, typ
    return kind
