"""MemoryRegion: one ibv_mr, holding the Python buffer export it was registered from.

While the MR lives, the export (ffi.from_buffer) keeps Python from resizing or freeing the
memory under the NIC (a bytearray resize raises BufferError); close() deregisters, then
releases the export. The register/close path is one C call and a few slot stores each: it
is what the benchmark compares with the C floor. The shim's ``struct rdmapin_mr`` is owned
through ffi.gc, so an MR dropped unclosed is deregistered by C when it is collected.

An MR is a leaf rdmapin.resource.Resource: its PD (the parent) lists it in the shim, not in a
Python set, and its close is the Resource order done by one shim call (the ibv_mr is cleared
only once ibv_dereg_mr succeeded; a failed deregistration raises and leaves it registered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rdmapin import _lib
from rdmapin.access import Access
from rdmapin.errors import RegistrationError, UnsupportedError
from rdmapin.resource import Resource

if TYPE_CHECKING:
    from rdmapin.pd import ProtectionDomain

_object_new = object.__new__

# ibv_rereg_mr_flags
REREG_CHANGE_TRANSLATION = 1 << 0
REREG_CHANGE_PD = 1 << 1
REREG_CHANGE_ACCESS = 1 << 2

_dereg = _lib.dereg_mr
_release = _lib.release
_gc = _lib.gc
_mr_free = _lib.mr_free


class MemoryRegion(Resource):
    """A registered (pinned) range: ``lkey``/``rkey`` for work requests, ``addr``/``length``.

    Made by ``ProtectionDomain.register``; close it (or use ``with``) to unpin. Reading a
    field of a closed MR raises ClosedError, except ``lkey`` (kept for messages).
    """

    __slots__ = ("__weakref__", "_buf", "_m", "_pd")

    @classmethod
    def _new(cls, pd: ProtectionDomain, m: Any, buf: Any, access: int) -> MemoryRegion:
        """Wrap a fresh rdmapin_mr (ProtectionDomain.register inlines this)."""
        self = _object_new(cls)
        self._m = _gc(m, _mr_free)
        self._buf = buf
        self._pd = pd
        return self

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Deregister (unpin) and release the buffer export; a second close does nothing.

        Resource.close in one shim call (the hot path: no lock, no Python children): the
        shim decides who deregisters, so of two threads closing at once (or a close racing
        its PD's close) one does, the others get 1 (already closed)."""
        rc = _dereg(self._m)
        if rc < 0:
            raise RegistrationError(-rc, f"ibv_dereg_mr(lkey {self.lkey:#x})")
        buf = self._buf
        if buf is not None:
            self._buf = None
            _release(buf)  # idempotent, should two closes race here

    @property
    def lkey(self) -> int:
        return self._m.lkey

    def _live(self) -> Any:
        m = self._m
        if not m.mr:
            raise self._closed_error()
        return m

    @property
    def closed(self) -> bool:
        return not self._m.mr

    def _describe(self) -> str:
        return f"MR lkey {self._m.lkey:#x}"

    # -- facts --------------------------------------------------------------------------
    @property
    def addr(self) -> int:
        return self._live().addr

    @property
    def length(self) -> int:
        return self._live().length

    @property
    def rkey(self) -> int:
        return self._live().rkey

    @property
    def handle(self) -> int:
        """The MR's kernel handle (ibv_mr.handle)."""
        return self._live().handle

    @property
    def access(self) -> Access:
        return Access(self._live().access)

    @property
    def pd(self) -> ProtectionDomain:
        self._live()
        return self._pd

    @property
    def device(self) -> str:
        return self.pd._device

    def pages(self) -> Any:
        """What the kernel holds for this range now (rdmapin.pages.inspect)."""
        m = self._live()
        from rdmapin import pages  # upper layer, imported only when asked for

        return pages.inspect(m.addr, m.length)

    # -- verbs beyond register/deregister ------------------------------------------------
    def rereg(self, *, access: int | None = None, pd: ProtectionDomain | None = None) -> None:
        """ibv_rereg_mr for access and/or PD changes (UnsupportedError where the device
        lacks it: rxe on 6.1 answers EOPNOTSUPP)."""
        m = self._live()
        flags = 0
        new_access = m.access
        if access is not None:
            flags |= REREG_CHANGE_ACCESS
            new_access = int(access)
        new_pd = None
        if pd is not None:
            flags |= REREG_CHANGE_PD
            new_pd = pd._handle()
        rc, code = _lib.rereg_mr(m, flags, new_pd, None, 0, new_access)
        if rc:
            err = -rc
            if err in _lib.UNSUPPORTED:
                raise UnsupportedError(f"ibv_rereg_mr(lkey {self.lkey:#x}): not supported by "
                                       f"{self.device}", hint="deregister and register again")
            raise RegistrationError(err, f"ibv_rereg_mr(lkey {self.lkey:#x}, flags {flags}, "
                                         f"code {code})")
        if pd is not None:
            self._pd = pd

    def advise(self, advice: int = 0, flags: int = 1, offset: int = 0,
               length: int | None = None) -> None:
        """ibv_advise_mr (prefetch for ODP MRs); UnsupportedError where the device lacks it."""
        m = self._live()
        n = m.length - offset if length is None else length
        _lib.advise_mr(self.pd._handle().pd, advice, flags, m.addr + offset, n, self.lkey)

    def __repr__(self) -> str:
        if self.closed:
            return f"<MemoryRegion closed lkey={self.lkey:#x}>"
        m = self._live()
        return (f"<MemoryRegion {m.length} B at {m.addr:#x} lkey={self.lkey:#x} "
                f"rkey={m.rkey:#x} access={Access(m.access)!s}>")
