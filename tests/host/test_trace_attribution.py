"""The owner map, the pin ledger and the summaries, on real memory of this process (its own
pagemap) or synthetic PFNs where only the bookkeeping is under test."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from rdmapin.kernel import arch, pagemap
from rdmapin.trace.attribution import Owner, OwnerMap
from rdmapin.trace.events import Event, Kind
from rdmapin.trace.ledger import Keys, Ledger, Live
from rdmapin.trace.summary import Summary, render

PAGE = arch.PAGE_SIZE


def _owner(pid: int = 1, addr: int = 0x1000, length: int = 4 * PAGE) -> Owner:
    return Owner(pid=pid, comm="x", addr=addr, length=length, source="ledger")


def test_owner_map_lookup_range_and_remove():
    m = OwnerMap()
    a = m.add(_owner(pid=10), np.array([100, 101, 102, 0], dtype=np.uint64))
    b = m.add(_owner(pid=20), np.arange(600, 610, dtype=np.uint64))
    assert a.pages == 3  # PFN 0 (not present) is not an owner's page
    assert m.lookup(101) is a and m.lookup(605) is b and m.lookup(103) is None
    assert m.in_range(0, 512) == {a.ident: 3}
    assert m.in_range(512, 1024) == {b.ident: 10}
    assert m.in_range(101, 605) == {a.ident: 2, b.ident: 5}
    m.remove(a.ident)
    assert m.lookup(101) is None and m.in_range(0, 512) == {}


def test_owner_map_counts_every_pageblock_of_a_large_scattered_region_exactly():
    """The compaction test's shape: 131072 PFNs in the order a pagemap gives them, two
    owners, every pageblock counted against a direct count. Also run in the guest, where
    numpy 2.4's default (AVX2) argsort under QEMU 7.2 TCG misorders a few indices in
    10^5: the map sorted that way moved up to 13 PFNs across a pageblock boundary."""
    rng = np.random.default_rng(7)
    pfns = rng.permutation(np.arange(0x6800, 0x40000, dtype=np.uint64))[:131072]
    m = OwnerMap()
    a = m.add(_owner(pid=10), pfns[:100000])
    b = m.add(_owner(pid=20), pfns[100000:])
    for start in range(0x6800, 0x40000, 512):
        got = m.in_range(start, start + 512)
        want = {o.ident: int(((p >= start) & (p < start + 512)).sum())
                for o, p in ((a, pfns[:100000]), (b, pfns[100000:]))}
        assert got == {k: v for k, v in want.items() if v}, hex(start)


def _pfns_visible() -> bool:
    buf = mmap.mmap(-1, PAGE)
    buf[0] = 1
    arr = np.frombuffer(buf, dtype=np.uint8)
    ok = bool(pagemap.pfns(pagemap.read("self", arr.ctypes.data, PAGE)).any())
    del arr
    buf.close()
    return ok


def test_ledger_registration_maps_this_process_pages_and_release_forgets_them():
    if not _pfns_visible():
        pytest.skip("pagemap PFNs need CAP_SYS_ADMIN")
    buf = mmap.mmap(-1, 8 * PAGE)
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr[::PAGE] = 1
    addr = arr.ctypes.data
    pfns = pagemap.pfns(pagemap.read("self", addr, len(arr)))
    ledger = Ledger(OwnerMap())
    pending = ledger.begin(tid=7, pid=os.getpid(), comm="me", addr=addr, size=len(arr), ts_ns=1)
    assert ledger.registering(7) is pending
    o = ledger.got(tid=7, pid=os.getpid(), comm="me", addr=addr, size=len(arr), umem=0xdead,
                   ret=0)
    assert o is pending and ledger.registering(7) is None
    assert o.pages == 8 and all(ledger.owners.lookup(int(p)) is o for p in pfns)
    assert ledger.release(0xdead) is o
    assert ledger.owners.lookup(int(pfns[0])) is None
    assert ledger.release(0xbeef) is None  # a umem registered before tracing
    assert ledger.got(tid=8, pid=1, comm="x", addr=0, size=1, umem=0, ret=-12) is None
    assert ledger.failed == 1
    del arr
    buf.close()


def test_ledger_reads_a_pin_while_pinned_and_its_late_event_uses_that_read():
    """A long-term pin outside RDMA (a real io_uring fixed buffer): watch_pins reads its pages
    while pinned; its event, read after the pin is gone and the range unmapped, still gets
    the pinned pages. An event read before watch_pins reads for itself (here: nothing, the
    range is gone), and watch_pins then skips that pin."""
    if not _pfns_visible():
        pytest.skip("pagemap PFNs need CAP_SYS_ADMIN")
    from uring import FixedBuffer

    n = 8
    buf = mmap.mmap(-1, n * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr[::PAGE] = 1
    addr, pid = arr.ctypes.data, os.getpid()
    ledger = Ledger(OwnerMap())
    with FixedBuffer(addr, len(arr)):
        pinned = pagemap.pfns(pagemap.read("self", addr, len(arr)))
        ledger.watch_pins({111: (pid, addr, n)}, PAGE)
    del arr
    buf.close()  # unpinned and unmapped: a read of the range now finds no page
    o = ledger.pinned(pid, "me", addr, n, PAGE, ts_ns=111)
    assert o.pages == n and all(ledger.owners.lookup(int(p)) is o for p in pinned)
    assert not ledger.early_pins
    late = ledger.pinned(pid, "me", addr, n, PAGE, ts_ns=222)  # before watch_pins saw it
    assert late.pages == 0 and ledger.pins_used == {222}
    ledger.watch_pins({222: (pid, addr, n)}, PAGE)
    assert not ledger.early_pins and not ledger.pins_used


def test_ledger_reads_a_live_registrations_pages_before_its_event_arrives():
    """Ledger.watch reads the pages while the registration lives; the event, read later
    (after the pages moved, here: were written elsewhere), gets the pages read then."""
    if not _pfns_visible():
        pytest.skip("pagemap PFNs need CAP_SYS_ADMIN")
    buf = mmap.mmap(-1, 4 * PAGE)
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr[::PAGE] = 1
    addr, me = arr.ctypes.data, os.getpid()
    then = pagemap.pfns(pagemap.read("self", addr, len(arr)))
    ledger = Ledger(OwnerMap())
    asked = []
    live = {(0xbeef, 5): Live(me, addr, len(arr)), (0xcafe, 6): Live(me, addr, len(arr))}
    ledger.watch(live, lambda umem, ts: umem == 0xbeef, kernel_mrs=asked.append)
    assert set(ledger.early) == {(0xbeef, 5)}  # 0xcafe was released while being read
    assert asked == []  # this process's MRs come from its registry, not the kernel's list
    buf.madvise(mmap.MADV_DONTNEED)  # the pages are gone; a read now would find none
    o = ledger.got(tid=1, pid=me, comm="me", addr=addr, size=len(arr), umem=0xbeef, ret=0,
                   ts_ns=5)
    assert o.pages == 4 and all(ledger.owners.lookup(int(p)) is o for p in then)
    assert ledger.early == {}
    late = ledger.got(tid=2, pid=me, comm="me", addr=addr, size=len(arr), umem=0xbeef,
                      ret=0, ts_ns=7)  # another registration at a reused umem address
    assert late.pages == 0
    del arr
    buf.close()


def test_ledger_takes_mr_keys_from_the_kernel_probe_in_either_order():
    """bpf/mrkeys.c's keys reach the owner through the live map (watch, before the events)
    and through RP_MR_KEYS (keyed), whichever comes first, and beat a netlink match."""
    if not _pfns_visible():
        pytest.skip("pagemap PFNs need CAP_SYS_ADMIN")
    buf = mmap.mmap(-1, 2 * PAGE)
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr[::PAGE] = 1
    addr, me, n = arr.ctypes.data, os.getpid(), len(arr)
    keys = Keys(lkey=0x1234, rkey=0x1234, device="rxe0")
    asked: list[int] = []

    # watch reads the pages before restrack_add ran, then sees the keys the probe wrote
    ledger = Ledger(OwnerMap())
    ledger.watch({(0xa, 1): Live(me, addr, n)}, lambda u, t: True, kernel_mrs=None)
    assert ledger.early[(0xa, 1)].lkey is None
    ledger.watch({(0xa, 1): Live(me, addr, n, keys)}, lambda u, t: True, kernel_mrs=None)
    o = ledger.got(tid=1, pid=me, comm="me", addr=addr, size=n, umem=0xa, ret=0, ts_ns=1)
    assert (o.lkey, o.rkey, o.device, o.keys_from) == (0x1234, 0x1234, "rxe0", "restrack_add")
    assert o.pages == 2 and asked == []

    # the event path alone (watch never saw it): keys after the registration's event ...
    ledger = Ledger(OwnerMap())
    o = ledger.got(tid=1, pid=me, comm="me", addr=addr, size=n, umem=0xb, ret=0, ts_ns=2)
    o.set_keys(0x999, "rxe0", "netlink")  # a netlink match of the same pid and length
    assert ledger.keyed(0xb, 2, keys) is o
    assert (o.lkey, o.keys_from) == (0x1234, "restrack_add")
    assert ledger.keyed(0xb, 3, keys) is None  # another registration at that umem address
    # ... or before it (per-CPU perf buffers read out of order)
    ledger.release(0xb)
    assert ledger.keyed(0xc, 4, Keys(0x77, 0x78, "rxe1")) is None
    o = ledger.got(tid=1, pid=me, comm="me", addr=addr, size=n, umem=0xc, ret=0, ts_ns=4)
    assert (o.lkey, o.rkey, o.device, o.keys_from) == (0x77, 0x78, "rxe1", "restrack_add")
    assert (0xc, 4) not in ledger.early_keys
    del arr
    buf.close()


def test_summary_groups_failures_by_owner_and_compaction_skip_ratio():
    o = _owner(pid=42)
    o.lkey = 0x222
    evs = [Event(ts=0, kind=Kind.FOLIO_FAIL, pid=1, tid=1, comm="c", reason="compaction",
                 pfn=p, owners=[o], detail={}) for p in (5, 5, 6)]
    evs.append(Event(ts=0, kind=Kind.FOLIO_FAIL, pid=1, tid=1, comm="c", reason="compaction",
                     pfn=9, owners=[], detail={}))
    evs.append(Event(ts=0, kind=Kind.ISOLATE_MIGRATE, pid=1, tid=1, comm="c", reason="",
                     pfn=0, pfn_end=512, owners=[o],
                     detail={"scanned": 512, "taken": 128, "pinned": 384}))
    evs.append(Event(ts=0, kind=Kind.MIGRATE, pid=1, tid=1, comm="c", reason="compaction",
                     detail={"succeeded": 10, "failed": 3}))
    s = Summary()
    for e in evs:
        s.feed(e)
    rows = s.failures_by_owner()
    assert rows[0]["lkey"] == 0x222 and rows[0]["failures"] == 3 and rows[0]["pfns"] == 2
    assert rows[1]["owner"] == "unowned" and rows[1]["failures"] == 1
    (c,) = s.compaction_by_owner()
    assert (c["blocks"], c["pinned"], c["scanned"], c["taken"]) == (1, 384, 512, 128)
    assert c["skip_ratio"] == pytest.approx(0.75)
    d = s.to_dict({"lost_events": 0}, {})
    assert d["migrate_by_reason"] == {"compaction": {"succeeded": 10, "failed": 3}}
    text = render(s, {"lost_events": 0, "pgmigrate_fail": 3}, {"x": {1: 2, 3: 4}})
    assert "unowned" in text and "lost events: 0" in text and "0.750" in text


@pytest.mark.pure
def test_pagecache_deletions_are_summed_per_file_owner_and_unowned():
    """Pages a file's page cache dropped under a pin: per owner (kind file, named by the
    path), and the ones no known pin holds under unowned."""
    o = _owner(pid=7)
    o.lkey, o.file = 0x288, "/mnt/pc/f"
    s = Summary()
    for pfn, nr, owners in ((500, 1, [o]), (501, 4, [o]), (900, 1, [])):
        s.feed(Event(ts=0.0, kind=Kind.FILEMAP_DELETE, pid=7, tid=7, comm="x", reason="",
                     pfn=pfn, owners=owners,
                     detail={"ino": 12, "index": 0, "dev": 0, "nr_pages": nr,
                             "refcount": 1025}))
    rows = s.to_dict()["pagecache_by_owner"]
    assert [(r["pages"], r["file"], r["lkey"]) for r in rows] == [(5, "/mnt/pc/f", 0x288),
                                                                  (1, None, None)]
    assert o.kind == "file" and o.to_dict()["kind"] == "file"
    assert o.label() == "mr lkey=0x288 x[7] 0x1000+16384 file=/mnt/pc/f"
    text = render(s, {}, {})
    assert f"{5:>17}  {o.label()}" in text and f"{1:>17}  unowned" in text


@pytest.mark.pure
def test_pinned_pages_written_back_have_a_section_of_their_own_next_to_the_dropped():
    """Writeback of pinned page cache is summed per owner apart from deletions: the same
    owner can lose pages to truncation and have others written back."""
    o = _owner(pid=7)
    o.lkey, o.file = 0x288, "/mnt/pc/f"
    s = Summary()
    for kind, pfn, nr, owners in ((Kind.FILEMAP_WRITEBACK, 500, 1, [o]),
                                  (Kind.FILEMAP_WRITEBACK, 501, 1, [o]),
                                  (Kind.FILEMAP_DELETE, 502, 1, [o]),
                                  (Kind.FILEMAP_WRITEBACK, 900, 4, [])):
        s.feed(Event(ts=0.0, kind=kind, pid=7, tid=7, comm="x", reason="", pfn=pfn,
                     owners=owners, detail={"ino": 12, "index": 0, "dev": 0, "nr_pages": nr,
                                            "refcount": 1025}))
    d = s.to_dict()
    assert [(r["pages"], r["file"], r["lkey"]) for r in d["writeback_by_owner"]] == [
        (4, None, None), (2, "/mnt/pc/f", 0x288)]
    assert [(r["pages"], r["lkey"]) for r in d["pagecache_by_owner"]] == [(1, 0x288)]
    lines = render(s, {}, {}).splitlines()
    i = lines.index(f"{'PAGECACHE DROPPED':>17}  OWNER (pinned pages its file no longer has)")
    assert lines[i + 1] == f"{1:>17}  {o.label()}"
    assert lines[i + 2] == (f"{'PAGECACHE WRITTEN':>17}  OWNER (pinned pages written back "
                            "under the pin)")
    assert lines[i + 3:i + 5] == [f"{4:>17}  unowned", f"{2:>17}  {o.label()}"]
