"""pyverbs compatibility: the ``struct ibv_pd *`` inside a pyverbs ``PD``.

``ProtectionDomain.from_pyverbs`` registers into a PD that pyverbs allocated, so it needs that
PD's C pointer. pyverbs' public ``PD.pd`` property gives it only from rdma-core v59.0 on:

- up to v58 (Debian 12 ships v44: python3-pyverbs 44.0-2) it is ``return <object>self.pd``,
  the C pointer cast to a Python object. Reading it increfs a word of the ``struct ibv_pd``
  and hands out a non-object; the first look at it crashes the interpreter. It must not be
  read at all, so the pointer is found by a scan instead (``_scan``).
- v59.0 made it ``return <uintptr_t>self.pd``, an int (rdma-core commit 47c3855f3,
  "pyverbs: Change PD object return type", for Cython 3).

Which one is installed cannot be probed without reading the property, and no pyverbs release
up to v64.0 has a version attribute (``pyverbs.__version__`` came after it, rdma-core commit
ce466b337). So the property is read only when ``pyverbs.__version__`` says 59 or later;
everywhere else (v44 to v64) the scan runs, which finds the same pointer in the Cython
object's fields. Either way the address is accepted only if it points at a readable
``struct ibv_pd`` whose handle is the PD's handle.

Remove the scan once every pyverbs rdmapin supports has ``__version__``.
"""

from __future__ import annotations

import os
from typing import Any

from rdmapin.errors import BufferTypeError, ClosedError

# The first rdma-core release whose PD.pd returns the pointer as an int.
PD_PROPERTY_SINCE = 59


def pd_address(pyverbs_pd: Any) -> int:
    """The ``struct ibv_pd *`` of an open pyverbs PD, as an int.

    BufferTypeError for anything but a pyverbs PD; ClosedError when no live ibv_pd is found
    (the PD is closed)."""
    handle = getattr(pyverbs_pd, "handle", None) if _is_pyverbs_pd(pyverbs_pd) else None
    if not isinstance(handle, int):
        raise BufferTypeError(f"from_pyverbs needs an open pyverbs.pd.PD, got "
                              f"{type(pyverbs_pd).__name__}")
    with _Memory() as mem:
        if _pyverbs_major() >= PD_PROPERTY_SINCE:
            address = pyverbs_pd.pd
            if isinstance(address, int) and mem.is_ibv_pd(address, handle):
                return address
        found = _scan(mem, pyverbs_pd, handle)
    if len(found) != 1:
        raise ClosedError(f"cannot find the ibv_pd of pyverbs PD handle {handle} "
                          f"({len(found)} candidates); is it open?")
    return found.pop()


def _is_pyverbs_pd(obj: Any) -> bool:
    try:
        from pyverbs.pd import PD
    except ImportError:
        return False
    return isinstance(obj, PD)


def _pyverbs_major() -> int:
    """pyverbs' rdma-core major version, 0 where pyverbs does not say (every release to v64)."""
    import pyverbs

    try:
        return int(str(getattr(pyverbs, "__version__", "0")).split(".")[0])
    except ValueError:
        return 0


def _scan(mem: _Memory, pyverbs_pd: Any, handle: int) -> set[int]:
    """Every word of the PD object's own struct that points at an ibv_pd with this handle.

    Only the object's own struct (``__basicsize__``): words past it belong to whatever the
    allocator put next, and one of them can look like an ibv_pd with handle 0 as well."""
    obj = mem.read(id(pyverbs_pd), type(pyverbs_pd).__basicsize__) or b""
    found = set()
    for off in range(16, len(obj) - 7, 8):  # past the PyObject header
        ptr = int.from_bytes(obj[off:off + 8], "little")
        if mem.is_ibv_pd(ptr, handle):
            found.add(ptr)
    return found


class _Memory:
    """Reads of this process's memory through /proc/self/mem, which fails cleanly on an
    unmapped address instead of faulting."""

    def __enter__(self) -> _Memory:
        self.fd = os.open("/proc/self/mem", os.O_RDONLY)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read(self, addr: int, n: int) -> bytes | None:
        if addr < 4096 or addr >= 1 << 47:
            return None
        try:
            data = os.pread(self.fd, n, addr)
        except OSError:
            return None
        return data if len(data) == n else None

    def is_ibv_pd(self, ptr: int, handle: int) -> bool:
        """``ptr`` points at a ``struct ibv_pd { struct ibv_context *context; u32 handle; }``
        with this handle, whose context's ``device`` pointer leads to readable memory."""
        head = self.read(ptr, 12)
        if head is None or int.from_bytes(head[8:12], "little") != handle:
            return False
        ctx = self.read(int.from_bytes(head[:8], "little"), 8)  # ibv_context.device
        return ctx is not None and self.read(int.from_bytes(ctx, "little"), 8) is not None
