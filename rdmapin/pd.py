"""ProtectionDomain: where memory is registered; owns (weakly) the MRs made in it.

Closing a PD closes its live MRs first, then deallocates it. A PD taken from pyverbs
(``from_pyverbs``) is never deallocated here: pyverbs owns it, rdmapin only registers into
it, so pyverbs QPs can use rdmapin MRs.
"""

from __future__ import annotations

import errno as _errno
import weakref
from typing import TYPE_CHECKING, Any

from rdmapin import _lib, explain, registry
from rdmapin.access import OPTIONAL_RANGE, WRITABLE, Access, describe
from rdmapin.errors import BufferTypeError, ClosedError
from rdmapin.mr import MemoryRegion

if TYPE_CHECKING:
    from rdmapin.device import Device

_reg = _lib.reg_mr
_from_buffer = _lib.from_buffer
_release = _lib.release
_errno_of_call = _lib.errno
_wrap = MemoryRegion._new
_object_new = object.__new__
_ref = weakref.ref
_live_pds: weakref.WeakSet[ProtectionDomain] = weakref.WeakSet()


def _live_records() -> list[registry.MrRecord]:
    """registry source: every live MR of every live PD (read only when asked)."""
    out = []
    for pd in list(_live_pds):
        for ref in list(pd._mrs.values()):
            mr = ref()
            if mr is not None and mr._m is not None:
                out.append(mr.record())
    return out


registry.add_source(_live_records)


class ProtectionDomain:
    """An ibv_pd. ``register(buffer, access)`` pins a buffer and returns a MemoryRegion."""

    def __init__(self, device: Device | None, pd: Any, *, owner: Any = None,
                 device_name: str | None = None) -> None:
        self._device_obj = device
        self._pd = pd
        self._owner = owner  # the pyverbs PD we borrowed pd from (kept alive), else None
        self._device = device_name or _lib.pd_device_name(pd)
        self._mrs: dict[int, weakref.ref[MemoryRegion]] = {}
        self._max_mr_size: int | None = None
        _live_pds.add(self)

    @classmethod
    def from_pyverbs(cls, pyverbs_pd: Any) -> ProtectionDomain:
        """Register into a PD allocated by pyverbs (its ``.pd`` is the ibv_pd address).

        The pyverbs PD is kept alive while this object lives; close the rdmapin MRs before
        closing the pyverbs PD (ibv_dealloc_pd refuses a PD with MRs: EBUSY)."""
        address = getattr(pyverbs_pd, "pd", None)
        if not isinstance(address, int):
            raise BufferTypeError(f"from_pyverbs needs a pyverbs.pd.PD, got "
                                  f"{type(pyverbs_pd).__name__}")
        if address == 0:
            raise ClosedError("the pyverbs PD is closed")
        return cls(None, _lib.pd_from_address(address), owner=pyverbs_pd)

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Close live MRs, then deallocate the PD (not for a borrowed pyverbs PD)."""
        pd, self._pd = self._pd, None
        if pd is None:
            return
        for _ in range(3):  # a register racing with close may add one after the sweep
            for ref in list(self._mrs.values()):
                mr = ref()
                if mr is not None:
                    mr.close()
            self._mrs.clear()
            if self._owner is not None:
                break
            try:
                _lib.dealloc_pd(pd)
                break
            except OSError as e:
                if e.errno != _errno.EBUSY or not self._mrs:
                    self._pd = pd
                    raise
        self._owner = None
        if self._device_obj is not None:
            self._device_obj._pds.pop(id(self), None)

    def __enter__(self) -> ProtectionDomain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_pd", None) is not None:
            try:
                self.close()
            except Exception as e:  # a finalizer never raises
                import logging

                logging.getLogger(__name__).warning("closing PD in finalizer: %s", e)

    @property
    def closed(self) -> bool:
        return self._pd is None

    def _handle(self) -> Any:
        if self._pd is None:
            raise ClosedError(f"PD on {self._device} is closed")
        return self._pd

    @property
    def device(self) -> str:
        return self._device

    @property
    def handle(self) -> int:
        """The PD's kernel handle (what `rdma resource show pd` lists)."""
        return _lib.pd_handle(self._handle())

    @property
    def mrs(self) -> list[MemoryRegion]:
        """The live MRs registered through this object."""
        return [m for r in list(self._mrs.values()) if (m := r()) is not None]

    def _max_mr(self) -> int | None:
        if self._max_mr_size is None and self._device_obj is not None:
            self._max_mr_size = int(self._device_obj.caps.max_mr_size)
        return self._max_mr_size

    # -- registration --------------------------------------------------------------------
    def register(self, buffer: Any, access: int = Access.LOCAL_WRITE, *,
                 iova: int | None = None) -> MemoryRegion:
        """Pin ``buffer`` (any C-contiguous buffer, or an ``(address, length)`` tuple) and
        return its MemoryRegion; the MR holds the buffer export until closed."""
        pd = self._pd
        if pd is None:
            raise ClosedError(f"PD on {self._device} is closed; cannot register")
        access = int(access)
        if type(buffer) is tuple:
            cbuf = None
            addr, length = buffer
            ptr = _lib.void_p(addr)
        else:
            try:
                cbuf = _from_buffer(buffer, require_writable=access & WRITABLE)
            except (TypeError, BufferError, ValueError) as e:
                raise _buffer_error(buffer, access, e) from None
            ptr = cbuf
            length = len(cbuf)
        if iova is not None or not length or access & OPTIONAL_RANGE:
            return self._register_slow(cbuf, ptr, length, access, iova)
        m = _reg(pd, ptr, length, access)
        if not m:
            err = _errno_of_call()
            if cbuf is not None:
                _release(cbuf)
            raise self._explain(err, "ibv_reg_mr", ptr, length, access)
        # MemoryRegion._new, inlined: this is the path the benchmark holds to the C floor.
        mr = _object_new(MemoryRegion)
        mr._pd = self
        mr._m = m
        mr._buf = cbuf
        mr._access = access
        mr.addr = m.addr
        mr.length = m.length
        mr.rkey = m.rkey
        mr.handle = m.handle
        mr.lkey = lkey = m.lkey
        self._mrs[lkey] = _ref(mr)
        if self._pd is None:  # closed by another thread while we registered
            mr.close()
            raise ClosedError(f"PD on {self._device} was closed during registration")
        return mr

    def _register_slow(self, cbuf: Any, ptr: Any, length: int, access: int,
                       iova: int | None) -> MemoryRegion:
        """Zero length, iova and optional-range flags: ibv_reg_mr_iova2."""
        if not length:
            if cbuf is not None:
                _release(cbuf)
            raise explain.zero_length("ibv_reg_mr", _lib.address_of(ptr), access)
        addr = _lib.address_of(ptr)
        m = _lib.reg_mr_iova2(self._handle(), ptr, length, addr if iova is None else iova,
                              access)
        if not m:
            err = _errno_of_call()
            if cbuf is not None:
                _release(cbuf)
            raise self._explain(err, "ibv_reg_mr_iova2", ptr, length, access)
        return _wrap(self, m, cbuf, access)

    def register_dmabuf(self, fd: int, length: int, *, offset: int = 0, iova: int = 0,
                        access: int = Access.LOCAL_WRITE) -> MemoryRegion:
        """ibv_reg_dmabuf_mr (UnsupportedError where the device lacks it, e.g. rxe)."""
        access = int(access)
        m, err = _lib.reg_dmabuf_mr(self._handle(), offset, length, iova, fd, access)
        if m is None:
            raise explain.registration(err, call="ibv_reg_dmabuf_mr", addr=iova,
                                       length=length, access=access, device=self._device)
        return _wrap(self, m, None, access)

    def _explain(self, err: int, call: str, ptr: Any, length: int, access: int) -> Exception:
        try:
            max_mr = self._max_mr()
        except OSError:
            max_mr = None
        return explain.registration(err, call=call, addr=_lib.address_of(ptr), length=length,
                                    access=access, max_mr_size=max_mr, device=self._device)

    def __repr__(self) -> str:
        state = "closed" if self._pd is None else f"{len(self._mrs)} MRs"
        return f"<ProtectionDomain {self._device} {state}>"


def _buffer_error(obj: Any, access: int, e: Exception) -> Exception:
    kind = type(obj).__name__
    text = str(e)
    if "not writable" in text or "read-only" in text or "readonly" in text:
        from rdmapin.errors import RegistrationError

        return RegistrationError(
            _errno.EFAULT, f"register({kind}): the buffer is read-only but "
                           f"{describe(access & WRITABLE)} needs write access",
            hint="register it with Access.REMOTE_READ only, or pass a writable copy "
                 "(bytearray, numpy array)")
    if "contiguous" in text:
        return BufferTypeError(f"register({kind}): the buffer is not contiguous ({text}); "
                               "an MR covers one contiguous range",
                               hint="np.ascontiguousarray(x), or register the base array")
    return BufferTypeError(f"register({kind}): not a buffer ({text})",
                           hint="pass a bytearray, numpy array, mmap, memoryview, ctypes "
                                "array, or an (address, length) tuple")
