"""move_pages(2) to node 1 of a registered, an mlocked and a plain region: the tracer's
totals equal /proc/vmstat's deltas, every failed PFN is the registered region's and is
attributed to its MR and this process; the mlocked and plain pages migrate."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from trace_util import assert_totals_match, buffer_on_node, mlock, pfns_of

import rdmapin
from rdmapin import mm
from rdmapin.trace import Kind, Tracer

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm]
NPAGES = 64


def test_registered_pages_fail_and_are_attributed_mlocked_and_plain_migrate():
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        reg_buf, reg = buffer_on_node(NPAGES, 0)
        lck_buf, lck = buffer_on_node(NPAGES, 0)
        pln_buf, pln = buffer_on_node(NPAGES, 0)
        mlock(lck)
        with Tracer() as t:
            v0, t0 = t.vmstat_and_totals()
            mr = pd.register(reg)
            pinned = set(pfns_of(reg).tolist())
            try:
                st_reg = mm.move_pages(mm.page_addrs(reg.ctypes.data, len(reg)), 1)
                st_lck = mm.move_pages(mm.page_addrs(lck.ctypes.data, len(lck)), 1)
                st_pln = mm.move_pages(mm.page_addrs(pln.ctypes.data, len(pln)), 1)
                v1, t1 = t.vmstat_and_totals()
                events = t.events()
            finally:
                mr.close()
        deltas = assert_totals_match(v0, v1, t0, t1)
        assert (st_reg < 0).all(), st_reg
        assert (st_lck == 1).all() and (st_pln == 1).all()
        assert deltas["pgmigrate_fail"] == NPAGES
        assert deltas["pgmigrate_success"] == 2 * NPAGES

        fails = [e for e in events if e.kind == Kind.FOLIO_FAIL]
        failed_pfns = {e.pfn for e in fails}
        assert failed_pfns == pinned  # every registered page, and nothing else
        for e in fails:
            assert e.reason == "syscall_or_cpuset"
            assert e.detail["errno"] in ("EAGAIN", "EBUSY")
            assert e.detail["pincount"] >= 1
            (o,) = e.owners
            assert (o.pid, o.addr, o.length) == (os.getpid(), reg.ctypes.data, len(reg))
            assert o.lkey == mr.lkey and o.device == "rxe0"
        # The umem the ledger saw is the MR's: its size is what VmPin was charged.
        gets = [e for e in events if e.kind == Kind.UMEM_GET]
        assert [e.detail["length"] for e in gets] == [len(reg)]
        assert t1["umem_bytes"] - t0["umem_bytes"] == len(reg)

        migrates = [e for e in events if e.kind == Kind.MIGRATE and e.pid == os.getpid()]
        failed_calls = [e for e in migrates if e.detail["failed"]]
        assert sum(e.detail["failed"] for e in failed_calls) == NPAGES
        assert all(e.owners and e.owners[0].lkey == mr.lkey for e in failed_calls)
        assert sum(e.detail["succeeded"] for e in migrates) == 2 * NPAGES
        moved = np.concatenate([pfns_of(lck), pfns_of(pln)])
        assert not set(moved.tolist()) & failed_pfns
        del reg, lck, pln
        reg_buf.close()
        lck_buf.close()
        pln_buf.close()


def test_two_mrs_over_one_buffer_are_two_owners():
    """Registering one buffer twice pins its pages twice: the ledger names each umem with its
    own MR's key (both used to get the same one, the last the registry listed)."""
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        buf, arr = buffer_on_node(16, 0)
        try:
            with Tracer() as t, pd.register(arr) as a, pd.register(arr) as b:
                want = {(a.lkey, "rxe0"), (b.lkey, "rxe0")}
                time.sleep(0.5)  # a few of the pins thread's reads of the live registrations
                gets = t.events(Kind.UMEM_GET)
                keys = {(o.lkey, o.device) for e in gets for o in e.owners}
                assert len(gets) == 2, gets
                assert keys == want, gets
        finally:
            del arr
            buf.close()


def test_io_uring_pin_is_traced_and_its_failures_are_attributed_to_it():
    """A long-term pin outside RDMA (an io_uring fixed buffer: pin_user_pages with
    FOLL_LONGTERM on 6.1) is in the ledger as such, and move_pages(2)'s failures on its pages
    name it, this process and no MR; the totals still equal /proc/vmstat's deltas."""
    from uring import FixedBuffer

    buf, arr = buffer_on_node(NPAGES, 0)
    try:
        with Tracer() as t:
            v0, t0 = t.vmstat_and_totals()
            with FixedBuffer(arr.ctypes.data, len(arr)):
                pinned = set(pfns_of(arr).tolist())
                st = mm.move_pages(mm.page_addrs(arr.ctypes.data, len(arr)), 1)
                v1, t1 = t.vmstat_and_totals()
                events = t.events()
        deltas = assert_totals_match(v0, v1, t0, t1)
        assert (st < 0).all(), st
        assert deltas["pgmigrate_fail"] == NPAGES
        pins = [e for e in events if e.kind == Kind.PIN_LONGTERM]
        assert [(e.detail["addr"], e.detail["nr_pages"]) for e in pins] == [
            (arr.ctypes.data, NPAGES)]
        assert t1["longterm_pins"] - t0["longterm_pins"] == NPAGES
        fails = [e for e in events if e.kind == Kind.FOLIO_FAIL]
        assert {e.pfn for e in fails} == pinned
        for e in fails:
            (o,) = e.owners
            assert (o.source, o.pid, o.addr, o.length) == (
                "pin_user_pages", os.getpid(), arr.ctypes.data, len(arr))
            assert o.lkey is None and o.label().startswith("pin ")
    finally:
        del arr
        buf.close()


def test_io_uring_pin_is_read_while_pinned_though_its_event_is_read_late():
    """The tracer reads a pin's pages while they are pinned, not when it gets to the event
    (which a flood of failures or a slow terminal can hold back for tens of seconds in a TCG
    guest): with the draining thread held, a fixed buffer is registered, unregistered and its
    pages sent to node 1; the pin's owner still holds the PFNs its pages had while pinned."""
    from uring import FixedBuffer

    from rdmapin.trace.tracer import PIN_WATCH_S

    buf, arr = buffer_on_node(NPAGES, 0)
    try:
        with Tracer() as t:
            with t._lock:  # the draining thread waits here; the pins thread does not
                with FixedBuffer(arr.ctypes.data, len(arr)):
                    pinned = pfns_of(arr)
                    time.sleep(20 * PIN_WATCH_S)
                st = mm.move_pages(mm.page_addrs(arr.ctypes.data, len(arr)), 1)
                moved = pfns_of(arr)
            events = t.events()
        assert (st == 1).all(), st  # unpinned, they moved
        assert not set(moved.tolist()) & set(pinned.tolist())
        pins = [e for e in events if e.kind == Kind.PIN_LONGTERM]
        assert [(e.detail["addr"], e.detail["nr_pages"], e.reason) for e in pins] == [
            (arr.ctypes.data, NPAGES, "")]
        (o,) = pins[0].owners
        assert o.source == "pin_user_pages" and o.pages == NPAGES
        assert np.array_equal(t.owners.pfns(o.ident), np.unique(pinned))
        assert not t.ledger.early_pins  # the read was used by the event
    finally:
        del arr
        buf.close()
