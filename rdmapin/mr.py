"""MemoryRegion: one ibv_mr, holding the Python buffer export it was registered from.

While the MR lives, the export (ffi.from_buffer) keeps Python from resizing or freeing the
memory under the NIC (a bytearray resize raises BufferError); close() deregisters, then
releases the export. The register/close path is kept to one C call and a handful of
attribute stores: it is what the benchmark compares with the C floor.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from rdmapin import _lib, registry
from rdmapin.access import Access
from rdmapin.errors import ClosedError, RegistrationError, UnsupportedError

if TYPE_CHECKING:
    from rdmapin.pd import ProtectionDomain

log = logging.getLogger(__name__)
_object_new = object.__new__

# ibv_rereg_mr_flags
REREG_CHANGE_TRANSLATION = 1 << 0
REREG_CHANGE_PD = 1 << 1
REREG_CHANGE_ACCESS = 1 << 2

_dereg = _lib.dereg_mr
_release = _lib.release


def _collected(ref: _Ref) -> None:
    """The MR was garbage-collected while registered: deregister it (never raise)."""
    pd, m = ref.pd, ref.m
    if pd is None or m is None or pd._mrs.pop(ref.lkey, None) is None:
        return
    ref.m = None
    rc = _dereg(m)
    if rc:
        log.warning("deregistering collected MR lkey %#x failed: errno %d", ref.lkey, -rc)
        return
    ref.pd = None
    if ref.buf is not None:
        _release(ref.buf)
        ref.buf = None


class _Ref(weakref.ref):
    """The PD's weak entry for one MR, carrying what is needed to deregister it.

    It doubles as the finalizer: while the MR is registered the PD holds this ref, so if the
    MR is collected unclosed the callback deregisters it; close() drops the ref first, so a
    closed MR dies with no callback and no __del__ (nothing on the hot path).
    """

    __slots__ = ("buf", "lkey", "m", "pd")


class MemoryRegion:
    """A registered (pinned) range: ``lkey``/``rkey`` for work requests, ``addr``/``length``.

    Made by ``ProtectionDomain.register``; close it (or use ``with``) to unpin. Reading a
    field of a closed MR raises ClosedError, except ``lkey`` (kept for messages).
    """

    __slots__ = ("__weakref__", "_access", "_r", "lkey")

    @classmethod
    def _new(cls, pd: ProtectionDomain, m: Any, buf: Any, access: int) -> MemoryRegion:
        """Wrap a fresh rdmapin_mr (ProtectionDomain.register inlines this)."""
        self = _object_new(cls)
        self._r = r = _Ref(self, _collected)
        r.m = m
        r.buf = buf
        r.pd = pd
        r.lkey = self.lkey = lkey = m.lkey
        self._access = access
        pd._mrs[lkey] = r
        return self

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Deregister (unpin) and release the buffer export; a second close does nothing."""
        r = self._r
        # dict.pop is atomic: of two threads closing at once, one gets the entry and
        # deregisters, the other returns. A PD closing its children goes through here too.
        if r is None or r.pd._mrs.pop(self.lkey, None) is None:
            return
        m = r.m
        r.m = None  # before the free list can recycle m: readers re-check this
        rc = _dereg(m)
        if rc:
            r.m = m
            r.pd._mrs[self.lkey] = r
            raise RegistrationError(-rc, f"ibv_dereg_mr(lkey {self.lkey:#x})")
        self._r = None
        buf = r.buf
        if buf is not None:
            _release(buf)

    def __enter__(self) -> MemoryRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> Any:
        r = self._r
        if r is None or r.m is None:
            raise ClosedError(f"MR lkey {self.lkey:#x} is closed")
        return r.m

    @property
    def closed(self) -> bool:
        return self._r is None

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
        self._live()
        return Access(self._access)

    @property
    def pd(self) -> ProtectionDomain:
        self._live()
        return self._r.pd  # type: ignore[union-attr]

    @property
    def device(self) -> str:
        return self.pd._device

    def record(self) -> registry.MrRecord | None:
        """This MR as the registry's plain record (None once closed)."""
        r = self._r
        m = r.m if r is not None else None
        pd = r.pd if r is not None else None
        if m is None or pd is None:
            return None
        rec = registry.MrRecord(pd._device, m.addr, m.length, m.lkey, m.rkey, self._access,
                                m.handle)
        # m may have been deregistered and recycled while we read it: keep only a record
        # read while it was still this MR's.
        return rec if r.m is m else None

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
        new_access = self._access
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
        r = self._r
        r.pd._mrs.pop(self.lkey, None)  # type: ignore[union-attr]
        if pd is not None:
            r.pd = pd  # type: ignore[union-attr]
        self._access = new_access
        r.lkey = self.lkey = m.lkey  # type: ignore[union-attr]
        r.pd._mrs[self.lkey] = r  # type: ignore[union-attr]

    def advise(self, advice: int = 0, flags: int = 1, offset: int = 0,
               length: int | None = None) -> None:
        """ibv_advise_mr (prefetch for ODP MRs); UnsupportedError where the device lacks it."""
        m = self._live()
        n = m.length - offset if length is None else length
        _lib.advise_mr(self.pd._handle(), advice, flags, m.addr + offset, n, self.lkey)

    def __repr__(self) -> str:
        if self.closed:
            return f"<MemoryRegion closed lkey={self.lkey:#x}>"
        m = self._live()
        return (f"<MemoryRegion {m.length} B at {m.addr:#x} lkey={self.lkey:#x} "
                f"rkey={m.rkey:#x} access={Access(self._access)!s}>")
