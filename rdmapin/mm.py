"""Memory-policy system calls the standard library lacks: move_pages(2) and mbind(2).

Thin ctypes wrappers on libc's syscall(); used to move pages between NUMA nodes (the
migration the tests and the demo provoke) and to bind allocations to a node.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from rdmapin.errors import RdmapinOSError
from rdmapin.kernel.arch import PAGE_SIZE

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_mbind = 237
SYS_move_pages = 279
MPOL_BIND = 2
MPOL_MF_STRICT = 1 << 0
MPOL_MF_MOVE = 1 << 1
MPOL_MF_MOVE_ALL = 1 << 2


def move_pages(addrs: np.ndarray, node: int, pid: int = 0) -> np.ndarray:
    """Ask the kernel to migrate the pages at ``addrs`` to ``node``.

    Returns the per-page status array: the node each page is on now, or -errno for a page
    that stayed (-EBUSY/-EAGAIN for a pinned page, -ENOENT for one not present).
    """
    addrs = np.ascontiguousarray(addrs, dtype=np.uint64)
    count = len(addrs)
    nodes = np.full(count, node, dtype=np.int32)
    status = np.full(count, -1, dtype=np.int32)
    rc = _libc.syscall(
        SYS_move_pages, ctypes.c_int(pid), ctypes.c_ulong(count),
        ctypes.c_void_p(addrs.ctypes.data), ctypes.c_void_p(nodes.ctypes.data),
        ctypes.c_void_p(status.ctypes.data), ctypes.c_int(MPOL_MF_MOVE),
    )
    if rc < 0:
        err = ctypes.get_errno()
        raise RdmapinOSError(err, f"move_pages({count} pages -> node {node})",
                             hint="node must exist and be in the allowed cpuset")
    return status


def page_addrs(addr: int, length: int) -> np.ndarray:
    """Start address of every base page in [addr, addr + length)."""
    first = addr - addr % PAGE_SIZE
    return np.arange(first, addr + length, PAGE_SIZE, dtype=np.uint64)


def mbind(addr: int, length: int, node: int, *, move: bool = False) -> None:
    """Bind [addr, addr+length) to ``node`` (MPOL_BIND); ``move`` migrates present pages."""
    mask = ctypes.c_ulong(1 << node)
    flags = MPOL_MF_STRICT | MPOL_MF_MOVE if move else 0
    rc = _libc.syscall(SYS_mbind, ctypes.c_void_p(addr), ctypes.c_ulong(length),
                       ctypes.c_int(MPOL_BIND), ctypes.byref(mask),
                       ctypes.c_ulong(ctypes.sizeof(mask) * 8), ctypes.c_uint(flags))
    if rc < 0:
        err = ctypes.get_errno()
        raise RdmapinOSError(err, f"mbind({length} B at {addr:#x} -> node {node})",
                             hint="is node online? (/sys/devices/system/node)")
