"""ProtectionDomain: where memory is registered.

The list of a PD's live MRs is kept by the C shim (``struct rdmapin_pd``), so register and
close are one C call each. Closing a PD (rdmapin.resource's order) closes its children:
it deregisters (unpins) its live MRs, then deallocates the PD, and forgets it only once that
succeeded; an MR closed that way keeps its Python buffer export until it is closed or dropped
itself. A PD taken from pyverbs (``from_pyverbs``) is never deallocated here: pyverbs owns
it, rdmapin only registers into it, so pyverbs QPs can use rdmapin MRs.
"""

from __future__ import annotations

import errno as _errno
import weakref
from typing import TYPE_CHECKING, Any

from rdmapin import _lib, _pyverbs_compat, explain, registry
from rdmapin.access import WRITABLE, Access, describe
from rdmapin.errors import BufferTypeError, ClosedError, RegistrationError
from rdmapin.mr import MemoryRegion
from rdmapin.regcache import RegCache
from rdmapin.resource import Resource

if TYPE_CHECKING:
    from rdmapin.device import Device

_reg = _lib.reg_mr
_reg_at = _lib.reg_mr_at
_from_buffer = _lib.from_buffer
_release = _lib.release
_gc = _lib.gc
_mr_free = _lib.mr_free
_errno_of_call = _lib.errno
_wrap = MemoryRegion._new
_object_new = object.__new__
_live_pds: weakref.WeakSet[ProtectionDomain] = weakref.WeakSet()


def _live_records() -> list[registry.MrRecord]:
    """registry source: every live MR of every live PD (read only when asked)."""
    return [rec for pd in list(_live_pds) for rec in pd.mrs]


registry.add_source(_live_records)


class ProtectionDomain(Resource):
    """An ibv_pd. ``register(buffer, access)`` pins a buffer and returns a MemoryRegion."""

    def __init__(self, device: Device | None, pd: Any, *, owner: Any = None,
                 device_name: str | None = None) -> None:
        self._pd = pd  # the shim's struct rdmapin_pd (ffi.gc-owned)
        self._owner = owner  # the pyverbs PD we borrowed pd from (kept alive), else None
        super().__init__(device)
        self._device = device_name or _lib.pd_device_name(pd.pd)
        self._max_mr_size: int | None = None
        _live_pds.add(self)

    @classmethod
    def from_pyverbs(cls, pyverbs_pd: Any) -> ProtectionDomain:
        """Register into a PD allocated by pyverbs, so pyverbs QPs can use rdmapin MRs.

        The pyverbs PD is kept alive while this object lives; close the rdmapin MRs before
        closing the pyverbs PD (ibv_dealloc_pd refuses a PD with MRs: EBUSY)."""
        address = _pyverbs_compat.pd_address(pyverbs_pd)
        return cls(None, _lib.wrap_pd(_lib.pd_from_address(address)), owner=pyverbs_pd)

    # -- lifetime (Resource: close() closes the MRs, then ibv_dealloc_pd) ----------------
    def close(self) -> None:
        """Deregister the live MRs, then deallocate the PD (not a borrowed pyverbs PD); a
        second close does nothing. When it fails, the PD stays open and takes new MRs again."""
        try:
            super().close()
        except BaseException:
            pd = self._pd
            if pd is not None:
                _lib.reopen_pd(pd)
            raise

    @property
    def closed(self) -> bool:
        return self._pd is None

    def _close_children(self) -> None:
        """Resource's children (none of rdmapin's own yet), then the MRs on the shim's list:
        the shim refuses new registrations from here on and waits for those in flight."""
        super()._close_children()
        self._close_mrs()

    def _close_mrs(self) -> None:
        rc = _lib.close_mrs(self._pd)
        if rc:
            raise RegistrationError(-rc, f"closing the MRs of the PD on {self._device}")

    def _release(self) -> None:
        """ibv_dealloc_pd; not for a borrowed pyverbs PD, which pyverbs deallocates."""
        if self._owner is not None:
            return
        for _ in range(2):
            try:
                _lib.dealloc_pd(self._pd)
                return
            except OSError as e:
                if e.errno != _errno.EBUSY or not self._pd.count:
                    raise
            self._close_mrs()  # a close in another thread may still have been deregistering
        _lib.dealloc_pd(self._pd)

    def _clear(self) -> None:
        self._pd = None
        self._owner = None

    def _describe(self) -> str:
        return f"PD on {self._device}"

    def __del__(self) -> None:
        self._close_in_finalizer()

    def _handle(self) -> Any:
        """The shim's PD; raises ClosedError once closed."""
        pd = self._pd
        if pd is None:
            raise self._closed_error()
        return pd

    @property
    def device(self) -> str:
        return self._device

    @property
    def handle(self) -> int:
        """The PD's kernel handle (what `rdma resource show pd` lists)."""
        return _lib.pd_handle(self._handle().pd)

    @property
    def mrs(self) -> list[registry.MrRecord]:
        """The MRs live in this PD, as the registry's records (the shim's list, copied)."""
        pd = self._pd
        if pd is None:
            return []
        return [registry.MrRecord(self._device, a, n, lk, rk, acc, h)
                for a, n, lk, rk, h, acc in _lib.live_mrs(pd)]

    def _max_mr(self) -> int | None:
        device = self._parent
        if self._max_mr_size is None and device is not None:
            self._max_mr_size = int(device.caps.max_mr_size)
        return self._max_mr_size

    # -- registration --------------------------------------------------------------------
    def register(self, buffer: Any, access: int = Access.LOCAL_WRITE, *,
                 iova: int | None = None) -> MemoryRegion:
        """Pin ``buffer`` (any C-contiguous buffer, or an ``(address, length)`` tuple) and
        return its MemoryRegion; the MR holds the buffer export until closed."""
        pd = self._pd
        if pd is None:
            raise self._closed_error("register")
        if type(access) is not int:
            access = int(access)
        if iova is not None:
            return self._register_iova(buffer, access, iova)
        if type(buffer) is tuple:
            cbuf = None
            try:
                m = _reg_at(pd, buffer[0], buffer[1], access)
            except (TypeError, IndexError, OverflowError) as e:
                raise BufferTypeError(f"register({buffer!r}): expected (address, length) "
                                      f"as two non-negative ints ({e})") from None
        else:
            try:
                cbuf = _from_buffer("char[]", buffer, access & WRITABLE)
            except (TypeError, BufferError, ValueError) as e:
                raise _buffer_error(buffer, access, e) from None
            m = _reg(pd, cbuf, len(cbuf), access)
        if not m:
            raise self._failed("ibv_reg_mr", buffer, cbuf, access)
        # MemoryRegion._new, inlined: this is the path the benchmark holds to the C floor.
        mr = _object_new(MemoryRegion)
        mr._m = _gc(m, _mr_free)
        mr._buf = cbuf
        mr._pd = self
        return mr

    def register_many(self, buffers: Any, access: int = Access.LOCAL_WRITE
                      ) -> list[MemoryRegion]:
        """Register every buffer (or ``(address, length)``) in one C call, all or none: when
        one fails, those done are deregistered and the error names it (``.index``)."""
        pd = self._pd
        if pd is None:
            raise self._closed_error("register_many")
        access = int(access)
        if not -(1 << 31) <= access < 1 << 31:
            raise RegistrationError(_errno.EINVAL, f"register_many(access={access:#x}): not an "
                                    "ibv_access_flags value (32 bits)",
                                    hint="combine rdmapin.Access flags")
        items = list(buffers)
        exports: list[Any] = []
        addrs: list[int] = []
        lengths: list[int] = []
        try:
            for i, buffer in enumerate(items):
                addr, length, cbuf = _address_length(buffer, access, i, len(items))
                exports.append(cbuf)
                addrs.append(addr)
                lengths.append(length)
            out = _lib.ffi.new("struct rdmapin_mr *[]", max(len(items), 1))
            err = _lib.ffi.new("int *")
            rc = _lib.lib.rdmapin_reg_many(pd, addrs, lengths, len(items), access, out, err)
            if rc < 0:
                i = -rc - 1
                exc = self._failed_at(err[0], addrs[i], lengths[i], access)
                _name_buffer(exc, i, len(items))
                raise exc
        except BaseException:
            for cbuf in exports:
                if cbuf is not None:
                    _release(cbuf)
            raise
        mrs = []
        for i, cbuf in enumerate(exports):
            mr = _object_new(MemoryRegion)
            mr._m = _gc(out[i], _mr_free)
            mr._buf = cbuf
            mr._pd = self
            mrs.append(mr)
        return mrs

    def cache(self, max_bytes: int | None = None, max_regions: int | None = None) -> RegCache:
        """A registration cache on this PD (rdmapin.regcache): closed before the PD is."""
        if self._pd is None:
            raise self._closed_error("make a cache")
        return RegCache(self, max_bytes, max_regions)

    def _failed_at(self, err: int, addr: int, length: int, access: int) -> Exception:
        if err == _errno.ESHUTDOWN:
            return ClosedError(f"PD on {self._device} was closed during ibv_reg_mr")
        try:
            max_mr = self._max_mr()
        except OSError:
            max_mr = None
        return explain.registration(err, call="ibv_reg_mr", addr=addr, length=length,
                                    access=access, max_mr_size=max_mr, device=self._device)

    def _failed(self, call: str, buffer: Any, cbuf: Any, access: int) -> Exception:
        """The explained error for a failed registration; releases the export first."""
        err = _errno_of_call()
        if err == _errno.ESHUTDOWN:  # the shim's refusal: a close of this PD had begun
            if cbuf is not None:
                _release(cbuf)
            return ClosedError(f"PD on {self._device} was closed during {call}")
        if cbuf is not None:
            addr, length = _lib.address_of(cbuf), len(cbuf)
            _release(cbuf)
        else:
            addr, length = buffer
        try:
            max_mr = self._max_mr()
        except OSError:
            max_mr = None
        return explain.registration(err, call=call, addr=addr, length=length, access=access,
                                    max_mr_size=max_mr, device=self._device)

    def _register_iova(self, buffer: Any, access: int, iova: int) -> MemoryRegion:
        """ibv_reg_mr_iova2: the device sees the region at ``iova``."""
        if type(buffer) is tuple:
            cbuf, ptr, length = None, _lib.void_p(buffer[0]), buffer[1]
        else:
            try:
                cbuf = _from_buffer("char[]", buffer, access & WRITABLE)
            except (TypeError, BufferError, ValueError) as e:
                raise _buffer_error(buffer, access, e) from None
            ptr, length = cbuf, len(cbuf)
        m = _lib.reg_mr_iova2(self._handle(), ptr, length, iova, access) if length else None
        if not m:
            if not length:
                if cbuf is not None:
                    _release(cbuf)
                raise explain.zero_length("ibv_reg_mr_iova2", iova, access)
            raise self._failed("ibv_reg_mr_iova2", buffer, cbuf, access)
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

    def __repr__(self) -> str:
        borrowed = " from pyverbs" if self._owner is not None else ""
        if self._pd is None:
            return f"<ProtectionDomain {self._device} closed>"
        n = len(self.mrs)
        return (f"<ProtectionDomain {self._device}{borrowed} handle={self.handle} open, "
                f"{n} MR{'' if n == 1 else 's'}>")


def _address_length(buffer: Any, access: int, i: int, n: int) -> tuple[int, int, Any]:
    """(address, length, export or None) of register_many's buffer ``i``."""
    if type(buffer) is tuple:
        try:
            addr, length = (int(x) for x in buffer)
        except (TypeError, ValueError) as e:
            raise BufferTypeError(f"register_many: buffer {i} of {n} ({buffer!r}): expected "
                                  f"(address, length) as two ints ({e})") from None
        if addr < 0 or length < 0 or addr + length > 1 << 64:
            raise BufferTypeError(f"register_many: buffer {i} of {n} ({addr:#x}, {length}): "
                                  "the range is outside the 64-bit address space")
        cbuf = None
    else:
        try:
            cbuf = _from_buffer("char[]", buffer, access & WRITABLE)
        except (TypeError, BufferError, ValueError) as e:
            exc = _buffer_error(buffer, access, e)
            _name_buffer(exc, i, n)
            raise exc from None
        addr, length = _lib.address_of(cbuf), len(cbuf)
    if length == 0:
        if cbuf is not None:
            _release(cbuf)
        exc = explain.zero_length("ibv_reg_mr", addr, access)
        _name_buffer(exc, i, n)
        raise exc
    return addr, length, cbuf


def _name_buffer(exc: Exception, i: int, n: int) -> None:
    """Prefix which of register_many's buffers an error is about; ``exc.index`` = i."""
    exc.index = i  # type: ignore[attr-defined]
    if hasattr(exc, "message"):
        exc.message = f"register_many: buffer {i} of {n}: {exc.message}"  # type: ignore
        if isinstance(exc, OSError):
            exc.args = (exc.errno, exc.message)
        else:
            exc.args = (exc.message,)


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
