"""Raw mmap/munmap/mremap/madvise for the tests that change mappings under an MR (ctypes on
libc: the standard library's mmap module cannot map at a fixed address or move a mapping)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import numpy as np

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                         ctypes.c_void_p]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

PROT_RW = 0x3
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
MADV_DONTNEED, MADV_REMOVE, MADV_FREE = 4, 9, 8
FAILED = ctypes.c_void_p(-1).value


def _check(rc: int | None, what: str) -> int:
    if rc is None or rc == FAILED or rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def mmap(length: int, addr: int = 0, *, fixed: bool = False, shared: bool = False) -> int:
    flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS | (MAP_FIXED if fixed else 0)
    return _check(_libc.mmap(addr or None, length, PROT_RW, flags, -1, 0), "mmap")


def munmap(addr: int, length: int) -> None:
    _check(_libc.munmap(addr, length), "munmap")


def mremap(addr: int, length: int, new_addr: int) -> int:
    return _check(_libc.mremap(addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr),
                  "mremap")


def madvise(addr: int, length: int, advice: int) -> None:
    _check(_libc.madvise(addr, length, advice), "madvise")


def view(addr: int, length: int) -> np.ndarray:
    """A uint8 array over raw memory (no ownership: valid while the mapping is)."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(addr))
