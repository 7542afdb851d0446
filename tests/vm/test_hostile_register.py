"""pd.register fed generated buffers, (address, length) tuples, slices at odd offsets and
access flags on a real rxe device: each example is a working MR or a typed RdmapinError, and
after it VmPin and the system's FOLL_PIN count are back at their baseline (nothing stays
pinned, half-registered or exported)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import rawmem
from hypothesis import example, given, settings
from hypothesis import strategies as st

import rdmapin
from rdmapin.errors import RdmapinError
from rdmapin.kernel import procfs

pytestmark = [pytest.mark.rdma, pytest.mark.vm]
PAGE = mmap.PAGESIZE
ACCESS = st.integers(min_value=0, max_value=(1 << 21) - 1) | st.sampled_from(
    [0, 1, 2, 3, 4, 7, 1 << 5, 1 << 6, 1 << 20, -1, 1 << 40])


@pytest.fixture(scope="module")
def pd():
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        yield pd


def _buffer(kind: str, size: int, offset: int):
    if kind == "bytearray":
        return bytearray(size)[offset:] if offset else bytearray(size)
    if kind == "bytes":
        return bytes(size)  # read-only: a writable access must be refused, typed
    if kind == "numpy":
        return np.zeros(size, dtype=np.uint8)[offset:]
    if kind == "numpy-strided":
        return np.zeros(size * 2, dtype=np.uint8)[::2]
    if kind == "memoryview-ro":
        return memoryview(bytearray(size)).toreadonly()
    if kind == "mmap":
        m = mmap.mmap(-1, max(size, 1))
        return m
    return object()


def _baseline() -> tuple[int, int]:
    return procfs.vm_pin(), procfs.foll_pins()


@settings(max_examples=60)
@given(kind=st.sampled_from(["bytearray", "bytes", "numpy", "numpy-strided", "memoryview-ro",
                             "mmap", "object"]),
       size=st.integers(min_value=0, max_value=4 * PAGE + 3),
       offset=st.integers(min_value=0, max_value=PAGE + 1), access=ACCESS)
@example(kind="bytearray", size=0, offset=0, access=1)
@example(kind="bytes", size=PAGE, offset=0, access=1)
def test_register_buffer_is_an_mr_or_a_typed_error_and_nothing_stays_pinned(pd, kind, size,
                                                                            offset, access):
    before = _baseline()
    buf = _buffer(kind, size, min(offset, size))
    try:
        with pd.register(buf, access) as mr:
            assert mr.length == memoryview(buf).nbytes and mr.lkey >= 0
    except RdmapinError:
        pass
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
    assert _baseline() == before


@settings(max_examples=60)
@given(addr=st.integers(min_value=-1, max_value=2**64) | st.sampled_from([0, PAGE, 2**47]),
       length=st.integers(min_value=-1, max_value=2**64) | st.sampled_from([0, 1, PAGE]),
       access=ACCESS, inside=st.booleans())
@example(addr=0, length=PAGE, access=1, inside=False)
@example(addr=2**64 - PAGE, length=2 * PAGE, access=1, inside=False)
def test_register_address_tuple_is_an_mr_or_a_typed_error(pd, addr, length, access, inside):
    before = _baseline()
    mem = mmap.mmap(-1, 4 * PAGE)
    try:
        if inside:  # a range inside memory we own, at an odd offset and length
            base = np.frombuffer(mem, dtype=np.uint8).ctypes.data
            addr, length = base + addr % (3 * PAGE), max(1, length % PAGE)
        try:
            with pd.register((addr, length), access) as mr:
                assert mr.length == length
        except RdmapinError:
            pass
    finally:
        mem.close()
    assert _baseline() == before


@pytest.fixture(scope="module")
def cache(pd):
    c = pd.cache(max_bytes=1 << 20)
    yield c
    c.close()


@settings(max_examples=60)
@given(kind=st.sampled_from(["bytearray", "bytes", "numpy", "numpy-strided", "memoryview-ro",
                             "mmap", "object", "tuple"]),
       size=st.integers(min_value=0, max_value=4 * PAGE + 3),
       offset=st.integers(min_value=0, max_value=PAGE + 1), access=ACCESS,
       addr=st.integers(min_value=-1, max_value=2**64) | st.sampled_from([0, 2**64 - PAGE]))
@example(kind="tuple", size=2 * PAGE, offset=0, access=1, addr=2**64 - PAGE)
@example(kind="tuple", size=0, offset=0, access=1, addr=PAGE)
def test_cache_get_is_a_handle_or_a_typed_error_and_flush_unpins(pd, cache, kind, size,
                                                                 offset, access, addr):
    before = _baseline()
    buf = (addr, size) if kind == "tuple" else _buffer(kind, size, min(offset, size))
    try:
        with cache.get(buf, access) as h:
            assert h.length == (size if kind == "tuple" else memoryview(buf).nbytes)
            assert h.mr.addr <= h.addr and h.addr + h.length <= h.mr.addr + h.mr.length
    except RdmapinError:
        pass
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
    stats = cache.stats()
    assert stats.handles_out == 0 and stats.bytes_pinned <= 1 << 20
    cache.flush()
    assert _baseline() == before


@settings(max_examples=30)
@given(kinds=st.lists(st.sampled_from(["bytearray", "bytes", "numpy", "numpy-strided",
                                       "mmap", "object", "hole", "empty"]), max_size=6),
       access=ACCESS)
@example(kinds=[], access=1)
def test_register_many_is_all_or_a_typed_error_naming_one(pd, kinds, access):
    before = _baseline()
    bufs = []
    for k in kinds:
        if k == "hole":  # a page that was mapped a moment ago
            addr = rawmem.mmap(PAGE)
            rawmem.munmap(addr, PAGE)
            bufs.append((addr, PAGE))
        elif k == "empty":
            bufs.append(bytearray())
        else:
            bufs.append(_buffer(k, PAGE, 0))
    try:
        mrs = pd.register_many(bufs, access)
        assert len(mrs) == len(bufs)
        for m in mrs:
            m.close()
    except RdmapinError as e:
        if -(1 << 31) <= access < 1 << 31:  # else refused as a whole, before any buffer
            assert 0 <= e.index < len(bufs) and f"buffer {e.index} of {len(bufs)}" in str(e)
    finally:
        for b in bufs:
            if isinstance(b, mmap.mmap):
                b.close()
    assert _baseline() == before
