"""RegCache: register once, reuse at memory speed, never a stale MR.

``cache = pd.cache()``; ``with cache.get(buf) as h:`` gives ``h.lkey``/``h.rkey``/``h.addr``
for a work request, from an MR that covers the request (maybe a larger one). The index and
the hit path are C (csrc/regcache.c): a hit is one call into the shim.

Invalidation comes from the kernel: a userfaultfd (one per process, WP mode, nothing ever
write-protected) registered over every cached range, with UNMAP, REMOVE and REMAP events,
read by a C thread. The kernel makes the thread that munmaps, mremaps, maps MAP_FIXED over
or madvises (DONTNEED, FREE, REMOVE) a watched range wait until its event is read, and the
reader reads it under the index's lock: a ``get()`` that starts after such a call returned
never sees an MR over the old memory. Ranges the kernel cannot watch, or where a change
raises no event, are registered for the caller but not cached (a *pass-through*, said once
per reason): page-cache files and device DAX (userfaultfd refuses them), shared memory
(shmem, memfd, shared hugetlb: truncating or punching holes raises no event), ranges another
userfaultfd holds (EBUSY), processes without userfaultfd.

Pins: a cached MR holds its pages pinned until evicted, invalidated or flushed; one that is
invalidated with handles out keeps its pin (the kernel keeps those pages, now no longer
mapped, for the device) until the last handle is released. The cache holds no Python buffer
export: a handle holds its buffer's export while out (so the buffer cannot be freed or
resized under a work request), and releasing it lets Python free the memory as usual; when
that unmaps the range, the event retires its MR. Memory freed back to the heap stays mapped,
so a later buffer at the same address is a correct hit (same pages).

Budget: RLIMIT_MEMLOCK less VmPin at creation, or a quarter of MemTotal when RLIMIT_MEMLOCK
is unlimited or the process has CAP_IPC_LOCK; ``max_regions`` defaults to 4096 (each cached
range can split its VMA: vm.max_map_count). Past the budget the least recently used idle MRs
are evicted; ENOMEM from a registration evicts every idle MR of every cache of the
process (VmPin is the process's) and retries once.
"""

from __future__ import annotations

import errno as _errno
import itertools
import resource
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rdmapin import _lib
from rdmapin.access import WRITABLE, Access
from rdmapin.errors import BufferTypeError, ClosedError, ForkedError, RegistrationError
from rdmapin.kernel import procfs
from rdmapin.kernel.arch import PAGE_SIZE as PAGE
from rdmapin.mr import MemoryRegion
from rdmapin.resource import Resource

if TYPE_CHECKING:
    from rdmapin.pd import ProtectionDomain

_ffi = _lib.ffi
_rc = _lib.lib
_rc_get = _rc.rdmapin_rc_get
_rc_put = _rc.rdmapin_rc_put
_rc_miss = _rc.rdmapin_rc_miss
_from_buffer = _lib.from_buffer
_release = _lib.release
_address_of = _lib.address_of
_errno_of_call = _lib.errno
_object_new = object.__new__

DEFAULT_MAX_REGIONS = 4096
RAM_FRACTION = 4  # a quarter of MemTotal when RLIMIT_MEMLOCK does not bound pins
WHY_CLOSED = 4
HUGE = (2 << 20, 1 << 30)
REAP_BATCH = 64

# Misses, unregistrations and evictions of every cache, one at a time: a range's
# userfaultfd registration and its entry's insertion must not interleave with another
# cache's unregistration of the same range. Hits never take it.
_miss_lock = threading.RLock()
# Every open cache of this process: VmPin and RLIMIT_MEMLOCK are the process's, so an ENOMEM
# in one cache evicts the idle MRs of all of them before it gives up.
_caches: weakref.WeakSet[RegCache] = weakref.WeakSet()
_ids = itertools.count(1)


class CacheWarning(UserWarning):
    """A range was registered but not cached (no invalidation source covers it)."""


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    invalidations: int
    merges: int
    passthrough: int
    regions: int
    bytes_pinned: int          # by the cached MRs (retired ones with handles out included)
    retired: int               # out of the cache, still registered until handles come back
    handles_out: int
    events: int                # invalidation events read (all caches of this process)
    max_bytes: int
    max_regions: int

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


class CacheHandle:
    """A registered view of one ``get()`` request: ``lkey``, ``rkey``, ``addr``, ``length``
    (the request's own), ``offset`` (of ``addr`` inside the MR) and ``mr``. Release it (or
    leave its ``with``) when the work requests using it have completed."""

    __slots__ = ("_addr", "_cache", "_e", "_export", "_length", "_mr")

    def _entry(self) -> Any:
        e = self._e
        if e is None:
            raise ClosedError("cache handle was released")
        if e.why == WHY_CLOSED:
            raise ClosedError("the cache of this handle was closed: its MR is deregistered")
        return e

    @property
    def lkey(self) -> int:
        return self._entry().lkey

    @property
    def rkey(self) -> int:
        return self._entry().rkey

    @property
    def addr(self) -> int:
        self._entry()
        return self._addr

    @property
    def length(self) -> int:
        self._entry()
        return self._length

    @property
    def offset(self) -> int:
        """Where ``addr`` lies in the MR (``mr.addr + offset == addr``)."""
        return self._addr - self._entry().addr

    @property
    def cached(self) -> bool:
        """False for a pass-through registration (deregistered on release)."""
        self._entry()
        return self._mr is None

    @property
    def mr(self) -> MemoryRegion:
        """The MemoryRegion covering the request (``mr.pages()`` shows its backing)."""
        e = self._entry()
        if self._mr is not None:
            return self._mr
        return self._cache._entries[e.id][1]

    @property
    def released(self) -> bool:
        return self._e is None

    def release(self) -> None:
        """Give the MR back to the cache; a second release does nothing."""
        e = self._e
        if e is None:
            return
        self._e = None
        cache = self._cache
        mr = self._mr
        if mr is not None:
            cache._passthrough_done(e.id)
        elif _rc_put(cache._c, e):
            cache._drop_idle([e])
        export = self._export
        if export is not None:
            self._export = None
            _release(export)

    def __enter__(self) -> CacheHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        e = self._e
        if e is None:
            return "<CacheHandle released>"
        kind = "cached" if self._mr is None else "pass-through"
        return (f"<CacheHandle {self._length} B at {self._addr:#x} lkey={e.lkey:#x} "
                f"offset={self._addr - e.addr} {kind}>")


def default_budget() -> tuple[int, str]:
    """(bytes, why): what a cache may pin when the caller gives no max_bytes."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    status = procfs.status()
    cap_ipc_lock = int(str(status.get("CapEff", "0")), 16) >> 14 & 1
    if soft == resource.RLIM_INFINITY or cap_ipc_lock:
        why = "RLIMIT_MEMLOCK unlimited" if soft == resource.RLIM_INFINITY else "CAP_IPC_LOCK"
        return int(procfs.meminfo()["MemTotal"]) // RAM_FRACTION, f"MemTotal/4 ({why})"
    return max(soft - int(status.get("VmPin", 0)), 0), "RLIMIT_MEMLOCK less VmPin"


class RegCache(Resource):
    """Cached registrations on one PD; see the module doc. Made by ``pd.cache()``."""

    def __init__(self, pd: ProtectionDomain, max_bytes: int | None = None,
                 max_regions: int | None = None) -> None:
        if max_bytes is None:
            max_bytes, self.budget_source = default_budget()
        else:
            self.budget_source = "max_bytes"
        if max_bytes < 0 or (max_regions is not None and max_regions <= 0):
            raise ValueError(f"RegCache(max_bytes={max_bytes}, max_regions={max_regions}): "
                             "max_bytes must be >= 0 and max_regions > 0")
        self.max_bytes = int(max_bytes)
        self.max_regions = DEFAULT_MAX_REGIONS if max_regions is None else int(max_regions)
        c = _rc.rdmapin_rc_new(self.max_bytes, self.max_regions)
        if not c:
            raise MemoryError("rdmapin_rc_new")
        self._c = _lib.gc(c, _rc.rdmapin_rc_free)
        self._pd = pd
        self._closed = False
        self._entries: dict[int, tuple[Any, MemoryRegion]] = {}
        self._passthrough: dict[int, MemoryRegion] = {}
        self._warned: set[str] = set()
        self._out = _ffi.new("struct rdmapin_rc_miss_out *")  # misses are serialised
        rc = _rc.rdmapin_uffd_start()
        self.source_error = -rc  # 0: the userfaultfd watches the cached ranges
        super().__init__(pd)
        _caches.add(self)

    # -- the hit path ------------------------------------------------------------------
    def get(self, buffer: Any, access: int = Access.LOCAL_WRITE) -> CacheHandle:
        """A handle on an MR covering ``buffer`` (any C-contiguous writable buffer, or an
        ``(address, length)`` tuple) with at least ``access``."""
        if type(access) is not int:
            access = int(access)
        export = None
        if type(buffer) is tuple:
            try:
                addr, length = buffer
                e = _rc_get(self._c, addr, length, access)
            except (TypeError, ValueError, OverflowError) as err:
                raise _bad_request(buffer, access, err) from None
        else:
            try:
                export = _from_buffer("char[]", buffer, access & WRITABLE)
            except (TypeError, BufferError, ValueError) as err:
                from rdmapin.pd import _buffer_error

                raise _buffer_error(buffer, access, err) from None
            addr, length = _address_of(export), len(export)
            try:
                e = _rc_get(self._c, addr, length, access)
            except OverflowError as err:
                _release(export)
                raise _bad_request(buffer, access, err) from None
        if not e or length <= 0:
            return self._miss(buffer, addr, length, access, export, e)
        h = _object_new(CacheHandle)
        h._cache = self
        h._e = e
        h._addr = addr
        h._length = length
        h._export = export
        h._mr = None
        return h

    # -- misses ------------------------------------------------------------------------
    def _miss(self, buffer: Any, addr: int, length: int, access: int, export: Any,
              e: Any) -> CacheHandle:
        try:
            if e and _rc_put(self._c, e):  # a zero-length request: give the reference back
                self._drop_idle([e])
            err = 0 if e else _errno_of_call()
            if err:
                raise self._unusable(err)
            if length <= 0:
                raise RegistrationError(_errno.EINVAL, f"cache.get({length} B at {addr:#x})",
                                        hint="a registration covers at least one byte")
            if addr + length > 1 << 64:
                raise RegistrationError(_errno.EINVAL, f"cache.get({length} B at {addr:#x}): "
                                        "the range wraps past the 64-bit address space")
            return self._register(buffer, addr, length, access, export)
        except BaseException:
            if export is not None:
                _release(export)
            raise

    def _unusable(self, err: int) -> Exception:
        if err == _errno.ECHILD:
            return ForkedError("this cache was made before fork(): the child never uses the "
                               "parent's MRs", hint="open the device and make a cache in "
                                                    "the child")
        return ClosedError("the cache is closed; cannot get")

    def _register(self, buffer: Any, addr: int, length: int, access: int,
                  export: Any) -> CacheHandle:
        """The miss, in one C call (rdmapin_rc_miss); an ENOMEM evicts every idle MR of
        every cache of the process and tries once more over the request's own range."""
        start = addr - addr % PAGE
        end = -(-(addr + length) // PAGE) * PAGE
        huge, map_lo, map_hi = _huge_mapping(buffer)
        out = self._out
        entry = _ffi.new("struct rdmapin_rc_entry *")
        entry.id = next(_ids)
        pd = self._pd._handle()
        with _miss_lock:
            rc = _rc_miss(self._c, pd, entry, start, end, huge, map_lo, map_hi, access, 0, out)
            if rc == -_errno.ENOMEM:
                for cache in list(_caches):  # this process's pins, whichever cache holds them
                    if not cache._closed and not _rc.rdmapin_rc_forked(cache._c):
                        cache._reap(2, 0)
                rc = _rc_miss(self._c, pd, entry, start, end, huge, map_lo, map_hi, access, 1,
                              out)
            if rc < 0:
                raise self._miss_failed(-rc, out)
            mr = _object_new(MemoryRegion)
            mr._m = _lib.gc(out.mr, _lib.mr_free)
            mr._buf = None
            mr._pd = self._pd
            if rc == 0:
                self._entries[entry.id] = (entry, mr)
            else:
                self._passthrough_handle(entry, mr, out.watch_err)
            if out.dead:
                self._reap(0, 0)
        h = _object_new(CacheHandle)
        h._cache, h._e, h._addr, h._length, h._export = self, entry, addr, length, export
        h._mr = mr if rc == 1 else None
        return h

    def _miss_failed(self, err: int, out: Any) -> Exception:
        if err in (_errno.ECHILD, _errno.ESHUTDOWN):
            return self._unusable(err)
        if err == _errno.EAGAIN:
            return RegistrationError(err, f"cache.get({out.length} B at {out.addr:#x}): the "
                                          "mapping kept changing while it was registered")
        return self._pd._failed_at(err, out.addr, out.length, out.access)

    # -- pass-through ----------------------------------------------------------------------
    def _passthrough_handle(self, entry: Any, mr: MemoryRegion, watch_err: int) -> None:
        """Keep a pass-through MR for its handle, and say once per reason why."""
        why = _passthrough_reason(watch_err, self.source_error)
        if why not in self._warned:
            self._warned.add(why)
            warnings.warn(CacheWarning(f"registered but not cached: {why}"), stacklevel=5)
        m = mr._m
        entry.addr, entry.length, entry.lkey, entry.rkey = m.addr, m.length, m.lkey, m.rkey
        entry.access, entry.refs = m.access, 1
        self._passthrough[entry.id] = mr

    def _passthrough_done(self, key: int) -> None:
        mr = self._passthrough.pop(key, None)
        if mr is not None:
            mr.close()

    # -- eviction --------------------------------------------------------------------------
    def _reap(self, mode: int, need: int) -> int:
        """Evict (mode 1: to fit ``need`` more bytes; 2: every idle MR), then deregister
        every idle retired entry. Returns how many were deregistered."""
        out = _ffi.new("struct rdmapin_rc_entry *[]", REAP_BATCH)
        total = 0
        while True:
            n = _rc.rdmapin_rc_reap(self._c, need, mode, out, REAP_BATCH)
            if n <= 0:
                return total
            self._drop_idle(list(out[0:n]))
            total += n
            mode = 0

    def _drop_idle(self, entries: list[Any]) -> None:
        """Deregister the MRs of entries out of the cache with no handle out, and stop
        watching their ranges where no live entry of any cache covers them."""
        for e in entries:
            _, mr = self._entries.pop(e.id, (None, None))
            if mr is not None:
                mr.close()
        with _miss_lock:
            for e in entries:
                _rc.rdmapin_uffd_unregister(e.addr, e.length)

    # -- the rest of the API ---------------------------------------------------------------
    def stats(self) -> CacheStats:
        """The counters now (idle retired MRs are deregistered first)."""
        if not self._closed:
            self._reap(0, 0)
        s = _ffi.new("struct rdmapin_rc_stats *")
        _rc.rdmapin_rc_stats(self._c, s)
        return CacheStats(
            hits=s.hits, misses=s.misses, evictions=s.evictions,
            invalidations=s.invalidations, merges=s.merges, passthrough=s.passthrough,
            regions=s.regions, bytes_pinned=s.bytes + s.retired_bytes, retired=s.retired,
            handles_out=s.handles + len(self._passthrough), events=s.events,
            max_bytes=self.max_bytes, max_regions=self.max_regions)

    def flush(self) -> int:
        """Deregister every cached MR with no handle out; returns how many."""
        if self._closed:
            raise self._closed_error("flush")
        return self._reap(2, 0)

    @property
    def closed(self) -> bool:
        return self._closed

    def _release(self) -> None:
        """close(): deregister every MR of the cache, those with handles out too (their
        handles raise ClosedError from then on, and work requests still using their keys
        fail with a protection error), then stop the source if no cache is left."""
        forked = _rc.rdmapin_rc_forked(self._c)
        _rc.rdmapin_rc_close(self._c)
        if forked:  # the parent's MRs: the child shares its uverbs file, never deregister
            for mr in [m for _, m in self._entries.values()] + list(self._passthrough.values()):
                _lib.gc(mr._m, None)  # no ibv_dereg_mr when collected here
            self._entries.clear()
            self._passthrough.clear()
            return
        self._reap(0, 0)
        for _, mr in list(self._entries.values()):
            mr.close()
        for mr in list(self._passthrough.values()):
            mr.close()
        self._passthrough.clear()
        _rc.rdmapin_uffd_release()

    def _clear(self) -> None:
        self._closed = True

    def _describe(self) -> str:
        return f"registration cache on {self._pd._device}"

    def __del__(self) -> None:
        self._close_in_finalizer()

    def __repr__(self) -> str:
        if self._closed:
            return f"<RegCache on {self._pd._device} closed>"
        s = self.stats()
        return (f"<RegCache on {self._pd._device} {s.regions} regions, "
                f"{s.bytes_pinned} B pinned of {s.max_bytes} ({self.budget_source}), "
                f"hits={s.hits} misses={s.misses} evictions={s.evictions} "
                f"invalidations={s.invalidations} handles_out={s.handles_out}>")


def _bad_request(buffer: Any, access: int, err: Exception) -> Exception:
    if not -(1 << 31) <= access < 1 << 31:
        return RegistrationError(_errno.EINVAL, f"cache.get(access={access:#x}): not an "
                                 "ibv_access_flags value (32 bits)",
                                 hint="combine rdmapin.Access flags")
    return BufferTypeError(f"cache.get({buffer!r}): expected a buffer or (address, length) "
                           f"as two non-negative ints below 2**64 ({err})")


def _huge_mapping(buffer: Any) -> tuple[int, int, int]:
    """(huge page size, mapping start, end) of an rdmapin THP or hugetlb buffer, whose MRs
    grow to whole huge pages inside its mapping (the fewest DMA blocks on a device with huge
    page sizes, and neighbours hit); (0, 0, 0) for any other buffer."""
    mapping = getattr(buffer, "mapping", None) if type(buffer) is not tuple else None
    if mapping is None or mapping.backing not in ("thp", "2m", "1g"):
        return 0, 0, 0
    size = HUGE[1] if mapping.backing == "1g" else HUGE[0]
    return size, mapping.addr, mapping.addr + mapping.length


def _passthrough_reason(watch_err: int, source_error: int) -> str:
    if source_error:
        return f"no userfaultfd in this process ({_errno.errorcode.get(source_error, '?')})"
    if watch_err == 0:
        return ("shared memory (shmem, memfd or shared hugetlb): truncating or punching "
                "holes in it raises no event")
    if watch_err == _errno.EBUSY:
        return "another userfaultfd of this process watches it (EBUSY)"
    if watch_err == _errno.EINVAL:
        return ("userfaultfd cannot watch this mapping (page-cache file, device DAX or a "
                "hole: only anonymous, shmem and hugetlb memory)")
    return f"userfaultfd refused it ({_errno.errorcode.get(watch_err, watch_err)})"
