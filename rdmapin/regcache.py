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
are evicted; ENOMEM from a registration evicts every idle MR and retries once.
"""

from __future__ import annotations

import errno as _errno
import itertools
import resource
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rdmapin import _lib
from rdmapin.access import WRITABLE, Access
from rdmapin.errors import BufferTypeError, ClosedError, ForkedError, RegistrationError
from rdmapin.kernel import pagemap, procfs
from rdmapin.kernel.arch import PAGE_SIZE as PAGE
from rdmapin.resource import Resource

if TYPE_CHECKING:
    from rdmapin.mr import MemoryRegion
    from rdmapin.pd import ProtectionDomain

_ffi = _lib.ffi
_rc = _lib.lib
_rc_get = _rc.rdmapin_rc_get
_rc_put = _rc.rdmapin_rc_put
_from_buffer = _lib.from_buffer
_release = _lib.release
_address_of = _lib.address_of
_errno_of_call = _lib.errno
_object_new = object.__new__

DEFAULT_MAX_REGIONS = 4096
RAM_FRACTION = 4  # a quarter of MemTotal when RLIMIT_MEMLOCK does not bound pins
WHY = {1: "invalidated", 2: "merged", 3: "evicted", 4: "closed"}
WHY_CLOSED = 4
_UFFDIO_ZEROPAGE = 1 << 0x04  # absent from a hugetlb range's ioctls
HUGE = (2 << 20, 1 << 30)
REAP_BATCH = 64

# Misses, unregistrations and evictions of every cache, one at a time: a range's
# userfaultfd registration and its entry's insertion must not interleave with another
# cache's unregistration of the same range. Hits never take it.
_miss_lock = threading.RLock()
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
        rc = _rc.rdmapin_uffd_start()
        self.source_error = -rc  # 0: the userfaultfd watches the cached ranges
        super().__init__(pd)

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
                raise BufferTypeError(f"cache.get({buffer!r}): expected (address, length) as "
                                      f"two non-negative ints ({err})") from None
        else:
            try:
                export = _from_buffer("char[]", buffer, access & WRITABLE)
            except (TypeError, BufferError, ValueError) as err:
                from rdmapin.pd import _buffer_error

                raise _buffer_error(buffer, access, err) from None
            addr, length = _address_of(export), len(export)
            e = _rc_get(self._c, addr, length, access)
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
        start = addr - addr % PAGE
        end = -(-(addr + length) // PAGE) * PAGE
        with _miss_lock:
            for _ in range(4):
                span = _ffi.new("uint64_t[2]", [start, end])
                acc = _ffi.new("int *", access)
                _rc.rdmapin_rc_span(self._c, span, span + 1, acc)
                own = _grow(start, end, buffer)
                lo, hi = _grow(span[0], span[1], buffer)
                if hi - lo > max(self.max_bytes, own[1] - own[0]):
                    lo, hi = own  # merging with its neighbours would outgrow the budget
                self._reap(1, hi - lo)
                seq = _rc.rdmapin_uffd_seq()
                lo, hi, why = self._watch(lo, hi)
                mr = self._pin(lo, hi, acc[0], own)
                if why is None and _shared(lo, hi):
                    why = ("shared memory (shmem, memfd or shared hugetlb): truncating or "
                           "punching holes in it raises no event")
                    _rc.rdmapin_uffd_unregister(lo, hi - lo)
                if why is not None:
                    return self._passthrough_handle(mr, addr, length, export, why)
                entry = self._entry_for(mr)
                rc = _rc.rdmapin_rc_reserve(self._c)
                if rc == 0:
                    rc = _rc.rdmapin_rc_insert(self._c, entry, seq)
                if rc == 0:
                    self._entries[entry.id] = (entry, mr)
                    break
                mr.close()
                if rc != -_errno.EAGAIN:  # EAGAIN: the range changed meanwhile: again
                    raise self._unusable(-rc) if rc in (-_errno.ECHILD, -_errno.ESHUTDOWN) \
                        else RegistrationError(-rc, "inserting into the cache")
            else:
                raise RegistrationError(_errno.EAGAIN,
                                        f"cache.get({length} B at {addr:#x}): the mapping "
                                        "kept changing while it was being registered")
        self._reap(0, 0)  # the merged entries that were idle
        h = _object_new(CacheHandle)
        h._cache, h._e, h._addr, h._length, h._export, h._mr = (
            self, entry, addr, length, export, None)
        return h

    def _watch(self, lo: int, hi: int) -> tuple[int, int, str | None]:
        """Register [lo, hi) with the invalidation source; (lo, hi, None) when watched (a
        hugetlb range grown to its page size), else the reason it is not."""
        if self.source_error:
            name = _errno.errorcode.get(self.source_error, self.source_error)
            return lo, hi, f"no userfaultfd in this process ({name})"
        ioctls = _ffi.new("uint64_t *")
        rc = _rc.rdmapin_uffd_register(lo, hi - lo, ioctls)
        if rc == -_errno.EINVAL:
            for size in HUGE:  # a hugetlb range registers only whole huge pages
                glo, ghi = lo - lo % size, -(-hi // size) * size
                if (glo, ghi) != (lo, hi) and \
                        _rc.rdmapin_uffd_register(glo, ghi - glo, ioctls) == 0:
                    return glo, ghi, None
        if rc == 0:
            return lo, hi, None
        if rc == -_errno.EBUSY:
            return lo, hi, "another userfaultfd of this process watches it (EBUSY)"
        if rc == -_errno.EINVAL:
            return lo, hi, ("userfaultfd cannot watch this mapping (page-cache file, device "
                            "DAX or a hole: only anonymous, shmem and hugetlb memory)")
        return lo, hi, f"userfaultfd refused it ({_errno.errorcode.get(-rc, -rc)})"

    def _pin(self, lo: int, hi: int, access: int, own: tuple[int, int]) -> MemoryRegion:
        """The MR over [lo, hi); on ENOMEM evict every idle MR and try once more, over the
        request's own range ``own`` (not merged with its neighbours)."""
        try:
            return self._pd.register((lo, hi - lo), access)
        except RegistrationError as err:
            if err.errno != _errno.ENOMEM:
                raise
        self._reap(2, 0)
        lo, hi = max(lo, own[0]), min(hi, own[1])
        return self._pd.register((lo, hi - lo), access)

    def _entry_for(self, mr: MemoryRegion) -> Any:
        entry = _ffi.new("struct rdmapin_rc_entry *")
        m = mr._m
        entry.addr, entry.length, entry.lkey, entry.rkey = m.addr, m.length, m.lkey, m.rkey
        entry.access = m.access
        entry.id = next(_ids)
        return entry

    # -- pass-through ----------------------------------------------------------------------
    def _passthrough_handle(self, mr: MemoryRegion, addr: int, length: int, export: Any,
                            why: str) -> CacheHandle:
        if why not in self._warned:
            self._warned.add(why)
            warnings.warn(CacheWarning(f"registered but not cached: {why}"), stacklevel=4)
        _rc.rdmapin_rc_passthrough(self._c)
        entry = self._entry_for(mr)
        self._passthrough[entry.id] = mr
        h = _object_new(CacheHandle)
        h._cache, h._e, h._addr, h._length, h._export, h._mr = (
            self, entry, addr, length, export, mr)
        entry.refs = 1
        return h

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
        if forked:  # the parent's MRs: never deregistered from the child
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


def _grow(lo: int, hi: int, buffer: Any) -> tuple[int, int]:
    """An rdmapin THP or hugetlb buffer's range grown to whole huge pages inside its
    mapping: the fewest DMA blocks for a device with huge page sizes, and neighbours hit."""
    mapping = getattr(buffer, "mapping", None) if not isinstance(buffer, tuple) else None
    if mapping is None or mapping.backing not in ("thp", "2m", "1g"):
        return lo, hi
    size = HUGE[1] if mapping.backing == "1g" else HUGE[0]
    return (max(lo - lo % size, mapping.addr),
            min(-(-hi // size) * size, mapping.addr + mapping.length))


def _shared(lo: int, hi: int) -> bool:
    """Is any page of [lo, hi) (present: just registered) shmem, shared or file-backed?"""
    return bool(pagemap.file_or_shared(pagemap.read("self", lo, hi - lo)).any())
