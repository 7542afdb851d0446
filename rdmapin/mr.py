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
_ref = weakref.ref


class MemoryRegion:
    """A registered (pinned) range: ``lkey``/``rkey`` for work requests, ``addr``/``length``.

    Made by ``ProtectionDomain.register``; close it (or use ``with``) to unpin.
    """

    __slots__ = ("__weakref__", "_access", "_buf", "_m", "_pd", "addr", "handle", "length",
                 "lkey", "rkey")

    @classmethod
    def _new(cls, pd: ProtectionDomain, m: Any, buf: Any, access: int) -> MemoryRegion:
        """Wrap a fresh rdmapin_mr; the PD's weak table doubles as the registry's source."""
        self = _object_new(cls)
        self._pd = pd
        self._m = m
        self._buf = buf
        self._access = access
        self.addr = m.addr
        self.length = m.length
        self.rkey = m.rkey
        self.handle = m.handle
        self.lkey = lkey = m.lkey
        pd._mrs[lkey] = _ref(self)
        return self

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Deregister (unpin) and release the buffer export; a second close does nothing."""
        pd = self._pd
        # dict.pop is atomic: of two threads closing at once, one gets the entry and
        # deregisters, the other returns. A PD closing its children goes through here too.
        if pd is None or pd._mrs.pop(self.lkey, None) is None:
            return
        rc = _dereg(self._m)
        if rc:
            pd._mrs[self.lkey] = _ref(self)
            raise RegistrationError(-rc, f"ibv_dereg_mr(lkey {self.lkey:#x})")
        self._m = self._pd = None
        buf = self._buf
        if buf is not None:
            self._buf = None
            _release(buf)

    def __enter__(self) -> MemoryRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A finalizer never raises: log and move on (the kernel frees the pin at exit).
        if self._m is None:
            return
        try:
            self.close()
        except Exception as e:  # a finalizer never raises
            log.warning("closing MR lkey %#x in finalizer failed: %s", self.lkey, e)

    def record(self) -> registry.MrRecord:
        """This MR as the registry's plain record."""
        return registry.MrRecord(self._pd._device if self._pd else "", self.addr,
                                 self.length, self.lkey, self.rkey, self._access, self.handle)

    @property
    def closed(self) -> bool:
        return self._m is None

    def _live(self) -> Any:
        if self._m is None:
            raise ClosedError(f"MR lkey {self.lkey:#x} is closed")
        return self._m

    # -- facts --------------------------------------------------------------------------
    @property
    def access(self) -> Access:
        return Access(self._access)

    @property
    def pd(self) -> ProtectionDomain:
        self._live()
        return self._pd  # type: ignore[return-value]

    @property
    def device(self) -> str:
        return self.pd._device

    def pages(self) -> Any:
        """What the kernel holds for this range now (rdmapin.pages.inspect)."""
        self._live()
        from rdmapin import pages  # upper layer, imported only when asked for

        return pages.inspect(self.addr, self.length)

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
        old = self._pd
        old._mrs.pop(self.lkey, None)  # type: ignore[union-attr]
        if pd is not None:
            self._pd = pd
        self._access = new_access
        self.lkey, self.rkey = m.lkey, m.rkey
        self.addr, self.length = m.addr, m.length
        self._pd._mrs[self.lkey] = _ref(self)  # type: ignore[union-attr]

    def advise(self, advice: int = 0, flags: int = 1, offset: int = 0,
               length: int | None = None) -> None:
        """ibv_advise_mr (prefetch for ODP MRs); UnsupportedError where the device lacks it."""
        self._live()
        n = self.length - offset if length is None else length
        _lib.advise_mr(self._pd._handle(), advice, flags, self.addr + offset, n,  # type: ignore[union-attr]
                       self.lkey)

    def __repr__(self) -> str:
        state = "closed" if self._m is None else f"{self.length} B at {self.addr:#x}"
        return (f"<MemoryRegion {state} lkey={self.lkey:#x} rkey={self.rkey:#x} "
                f"access={Access(self._access)!s}>")
