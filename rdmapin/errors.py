"""One hierarchy for every rdmapin failure.

A message says what failed, the numbers behind it (limit, request, what is free) and the fix.
Kernel-call failures are OSErrors too, so ``except OSError`` and ``.errno`` keep working.
"""

from __future__ import annotations

import errno as _errno
import os


class RdmapinError(Exception):
    """Base of every error rdmapin raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        self.message = f"{message} (hint: {hint})" if hint else message
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class RdmapinOSError(RdmapinError, OSError):
    """A system or verbs call failed; carries ``errno`` like OSError does."""

    def __init__(self, err: int, message: str, *, hint: str | None = None) -> None:
        RdmapinError.__init__(self, f"{message}: {os.strerror(err)} "
                              f"[{_errno.errorcode.get(err, err)}]", hint=hint)
        self.errno = err
        self.strerror = os.strerror(err)
        self.args = (err, self.message)


class KernelFormatError(RdmapinError, ValueError):
    """A kernel file said something its reader cannot parse: names the file and the line."""

    def __init__(self, path: str, lineno: int, line: str, why: str) -> None:
        shown = line if len(line) <= 120 else line[:117] + "..."
        super().__init__(f"{path}:{lineno}: cannot parse {shown!r}: {why}",
                         hint="a kernel this reader was not checked on, or not that file; "
                              "please report it with the kernel version")
        self.path, self.lineno, self.line = path, lineno, line


class DeviceError(RdmapinOSError):
    """Listing, opening or querying an RDMA device failed (or there is none)."""


class RegistrationError(RdmapinOSError):
    """ibv_reg_mr and friends refused a region; nothing of it stays pinned."""


class UnsupportedError(RdmapinError):
    """This device or kernel cannot do what was asked (rxe 6.1: rereg, ODP, dmabuf, DM)."""


class ClosedError(RdmapinError, ValueError):
    """A verbs object was used after close()."""


class ForkedError(ClosedError):
    """A cache (or its handle) made before fork() was used in the child, which must never
    touch the parent's MRs: make a new one there."""


class NoDeviceError(DeviceError):
    """There is no RDMA device (or none of that name) to open."""


class MemlockError(RegistrationError):
    """ENOMEM because the pin would exceed RLIMIT_MEMLOCK (no CAP_IPC_LOCK)."""


class BufferTypeError(RdmapinError, TypeError):
    """The object cannot be registered: no buffer protocol, not contiguous, or read-only for
    a writable registration. Raised before any verbs call, so nothing was pinned."""


class AllocationError(RdmapinOSError):
    """rdmapin.alloc could not map, bind or populate the memory asked for; nothing stays mapped."""


class HugepagesError(AllocationError):
    """Not enough free hugetlb pages of the size asked for (on the node asked for)."""


class WorkCompletionError(RdmapinError):
    """A work request completed with an error status (rdmapin.explain_wc builds it): names
    the status and its usual causes. After it the QP is in the error state."""

    def __init__(self, status: int, status_name: str, vendor_err: int, message: str, *,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status, self.status_name, self.vendor_err = status, status_name, vendor_err


class RendezvousError(RdmapinError):
    """Two peers could not exchange what their QPs need (rdmapin.rendezvous): no peer in
    time, the peer went away, or the two sides are out of step."""


class FsDaxPinError(RegistrationError):
    """EOPNOTSUPP: the range maps a file on a filesystem-DAX mount. The kernel refuses every
    long-term pin (FOLL_LONGTERM, which ib_umem_get uses) of such a mapping: the file system
    could not truncate, punch or reflink a block whose page a device holds. Nothing pinned."""


class FilePinError(RegistrationError):
    """EFAULT: a writable long-term pin of a shared mapping of a file whose file system writes
    pages back (ext4, xfs ...). Refused since Linux 6.5 (the file system must see each write
    through its dirty tracking); a read-only registration of the same mapping works."""
