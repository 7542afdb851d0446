"""The registration cache's C index and its invalidation source (a userfaultfd read by a C
thread) against this host's real kernel, no RDMA device needed: entries are inserted without
an MR (the index never touches libibverbs), and real munmap/madvise/mremap/MAP_FIXED calls
must retire them before the call returns."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import rawmem

from rdmapin import _lib, memory

ffi, lib = _lib.ffi, _lib.lib
N = 64 * 1024
NEEDED = 0x4 | 0x8 | 0x20  # UFFD_FEATURE_EVENT_REMAP | _REMOVE | _UNMAP

@pytest.fixture
def cache():
    c = lib.rdmapin_rc_new(0, 0)
    assert lib.rdmapin_uffd_start() == 0
    yield c
    lib.rdmapin_rc_close(c)
    lib.rdmapin_rc_free(c)
    assert lib.rdmapin_uffd_release() == 0


def cached(c, addr: int, length: int):
    """Watch [addr, addr+length) and put an MR-less entry over it in the index."""
    e = ffi.new("struct rdmapin_rc_entry *")
    e.addr, e.length, e.access, e.lkey = addr, length, 1, 0x1234
    seq = lib.rdmapin_uffd_seq()
    ioctls = ffi.new("uint64_t *")
    assert lib.rdmapin_uffd_register(addr, length, ioctls) == 0
    assert lib.rdmapin_rc_reserve(c) == 0
    assert lib.rdmapin_rc_insert(c, e, seq) == 0
    assert lib.rdmapin_rc_put(c, e) == 0  # insert hands out one reference
    return e


def stats(c):
    s = ffi.new("struct rdmapin_rc_stats *")
    lib.rdmapin_rc_stats(c, s)
    return s


def test_source_starts_with_the_events_it_needs(cache):
    info = ffi.new("struct rdmapin_uffd_info *")
    lib.rdmapin_uffd_info(info)
    assert info.fd >= 0 and info.err == 0 and info.features & NEEDED == NEEDED


@pytest.mark.parametrize("change", ["munmap", "map_fixed", "dontneed", "free", "mremap",
                                    "munmap_middle"])
def test_a_change_retires_the_entry_before_the_call_returns(cache, change):
    addr = rawmem.mmap(N)
    other = rawmem.mmap(N)
    try:
        rawmem.view(addr, N)[:] = 1
        e = cached(cache, addr, N)
        hit = lib.rdmapin_rc_get(cache, addr + 4096, 4096, 1)
        assert hit == e and lib.rdmapin_rc_put(cache, hit) == 0
        if change == "munmap":
            rawmem.munmap(addr, N)
            rawmem.mmap(N, addr, fixed=True)
        elif change == "map_fixed":
            rawmem.mmap(N, addr, fixed=True)
        elif change == "dontneed":
            rawmem.madvise(addr + 8192, 4096, rawmem.MADV_DONTNEED)
        elif change == "free":
            rawmem.madvise(addr, N, rawmem.MADV_FREE)
        elif change == "mremap":
            rawmem.mremap(addr, N, other)
            other = rawmem.mmap(N, addr, fixed=True)  # addr is mapped again, fresh
        else:
            rawmem.munmap(addr + 8192, 4096)
        # No sleep, no wait: the event was read under the index's lock before the call
        # above returned, so the entry is already out of the index.
        assert lib.rdmapin_rc_get(cache, addr, 4096, 1) == ffi.NULL
        assert lib.rdmapin_errno() == 0  # a miss, not an error
        s = stats(cache)
        assert (s.invalidations, s.regions, s.retired) == (1, 0, 1)
        out = ffi.new("struct rdmapin_rc_entry *[]", 4)
        assert lib.rdmapin_rc_reap(cache, 0, 0, out, 4) == 1 and out[0] == e
        assert e.why == 1 and stats(cache).retired == 0  # invalidated, given back
    finally:
        for a in {addr, other}:
            rawmem.munmap(a, N)


def test_unwatched_memory_raises_nothing_and_neighbours_stay(cache):
    a = rawmem.mmap(3 * N)
    try:
        e = cached(cache, a + N, N)
        before = lib.rdmapin_uffd_seq()
        rawmem.munmap(a, N)  # outside the watched range: no event
        rawmem.munmap(a + 2 * N, N)
        assert lib.rdmapin_uffd_seq() == before
        assert lib.rdmapin_rc_get(cache, a + N, N, 1) == e
        lib.rdmapin_rc_put(cache, e)
    finally:
        rawmem.munmap(a, 3 * N)


def test_insert_after_an_event_on_its_range_is_refused(cache):
    """A miss takes the event count before watching its range; an event over the range
    after that (the mapping changed while it was being registered) refuses the entry."""
    addr = rawmem.mmap(N)
    try:
        seq = lib.rdmapin_uffd_seq()
        ioctls = ffi.new("uint64_t *")
        assert lib.rdmapin_uffd_register(addr, N, ioctls) == 0
        rawmem.madvise(addr, 4096, rawmem.MADV_DONTNEED)
        e = ffi.new("struct rdmapin_rc_entry *")
        e.addr, e.length, e.access = addr, N, 1
        assert lib.rdmapin_rc_reserve(cache) == 0
        assert lib.rdmapin_rc_insert(cache, e, seq) == -11  # EAGAIN
        assert stats(cache).regions == 0
    finally:
        rawmem.munmap(addr, N)


def test_a_python_thread_holding_the_gil_unmaps_without_deadlock(cache):
    """The trap of a Python reader: numpy's dealloc munmaps with the GIL held and waits
    for the event to be read. The reader is C: the unmap returns."""
    arr = np.ones(64 << 20, np.uint8)  # its own mapping (above glibc's mmap threshold)
    start = arr.ctypes.data // 4096 * 4096  # malloc's header is in the mapping's first page
    end = -(-(arr.ctypes.data + arr.nbytes) // 4096) * 4096
    cached(cache, start, end - start)
    done = threading.Event()

    def drop() -> None:
        nonlocal arr
        del arr
        done.set()

    t = threading.Thread(target=drop)
    t.start()
    t.join(timeout=30)
    assert done.is_set(), "munmap blocked: the event was never read"
    assert stats(cache).invalidations == 1


def test_watching_takes_over_no_fault_thp_included(cache):
    """WP mode with nothing write-protected: first touches still fault in THPs (MISSING mode
    would hand every fault to the userfaultfd's reader, which never answers)."""
    span, huge = 6 << 20, 2 << 20
    raw = rawmem.mmap(span)
    addr = -(-raw // huge) * huge
    try:
        rawmem.madvise(addr, 4 << 20, 14)  # MADV_HUGEPAGE
        ioctls = ffi.new("uint64_t *")
        assert lib.rdmapin_uffd_register(addr, 4 << 20, ioctls) == 0
        rawmem.view(addr, 4 << 20)[::4096] = 1  # first touch of every page
        assert memory.thp_bytes(addr, 4 << 20) == 4 << 20
    finally:
        rawmem.munmap(raw, span)


def test_closed_and_forked_caches_refuse(cache):
    lib.rdmapin_rc_close(cache)
    assert lib.rdmapin_rc_get(cache, 4096, 4096, 1) == ffi.NULL
    assert lib.rdmapin_errno() == 108  # ESHUTDOWN
    r, w = os.pipe()
    c2 = lib.rdmapin_rc_new(0, 0)
    pid = os.fork()
    if pid == 0:
        ok = lib.rdmapin_rc_forked(c2) == 1 and lib.rdmapin_rc_get(c2, 4096, 4096, 1) == \
            ffi.NULL and lib.rdmapin_errno() == 10  # ECHILD
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert lib.rdmapin_rc_forked(c2) == 0
    lib.rdmapin_rc_close(c2)
    lib.rdmapin_rc_free(c2)
