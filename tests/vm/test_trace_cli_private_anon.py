"""`rdmapin trace -T --all`, run as `make demo` runs it (ci/demo), in another process while
this one sends a registered 64 MiB private anonymous buffer (rdmapin.alloc, what applications
register) to node 1 with move_pages(2), then a plain one: every pinned page's failure is
reported once, attributed to the MR's lkey and this pid, and the counts are the kernel's.
Then, like the demo's second MR, a short-lived 8 MiB one fails to move, is closed, and its
pages move: it is named too, though the tracer reads its events long after it is gone (its
output is read only at the end, as a slow terminal would: a TCG guest's tracer is tens of
seconds behind the first MR's failures even when writing to a file). Both MRs' keys are the
ones the kernel's struct ib_mr held when the RDMA core added it (bpf/mrkeys.c), not a later
match in the kernel's MR list: that answered too late for the short-lived one (lkey None in
some runs, the tracer being another process than the registrar).

Why private anonymous memory: a long-term-pinned private anonymous page is anon-exclusive and
maybe DMA-pinned, so try_to_migrate_one() will not unmap it (page_try_share_anon_rmap():
-EBUSY) and the attempt ends with -EAGAIN before move_to_new_folio(). The other tests' buffers
(Python's mmap.mmap(-1, n): MAP_SHARED, i.e. shmem) unmap and fail in move_to_new_folio()
instead, the only step the tracer used to watch.

What the kernel counts (mm/migrate.c): a refused page is tried NR_MAX_MIGRATE_PAGES_RETRY (10)
times within one migrate_pages() call, and that call adds it once to pgmigrate_fail. The tracer
reports it once per call (a folio_fail event; totals folio_failures) and counts the call's
other 9 attempts (folio_retries).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from trace_util import pfns_of, start_cli_tracer

import rdmapin
from rdmapin import mm
from rdmapin.kernel import procfs
from rdmapin.trace.events import VMSTAT_KEYS

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm]
SIZE = 64 << 20  # the demo's (examples/pinned_vs_plain.py)
NPAGES = SIZE // mm.PAGE_SIZE
SIZE2 = 8 << 20  # the demo's second MR (examples/offline_pinned.py)
NPAGES2 = SIZE2 // mm.PAGE_SIZE
ATTEMPTS = 10  # NR_MAX_MIGRATE_PAGES_RETRY


def _delta(v0: dict, v1: dict, key: str) -> int:
    return v1[key] - v0[key]


def test_cli_reports_each_pinned_private_anon_page_once_with_its_mr_and_kernel_counts():
    proc = start_cli_tracer("-T", "--all", "-j", "-d", "1800")
    try:
        v_start = procfs.vmstat()
        with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
            pinned = rdmapin.alloc(SIZE, node=0)
            plain = rdmapin.alloc(SIZE, node=0)
            mr = pd.register(pinned, access=rdmapin.Access.LOCAL_WRITE)
            lkey = mr.lkey
            pinned_pfns = set(pfns_of(pinned).tolist())
            v0 = procfs.vmstat()
            st_pinned = mm.move_pages(mm.page_addrs(pinned.addr, SIZE), 1)
            v1 = procfs.vmstat()
            st_plain = mm.move_pages(mm.page_addrs(plain.addr, SIZE), 1)
            v2 = procfs.vmstat()
            mr.close()
            brief = rdmapin.alloc(SIZE2, node=0)
            mr2 = pd.register(brief)
            lkey2 = mr2.lkey
            brief_pfns = set(pfns_of(brief).tolist())
            st_brief = mm.move_pages(mm.page_addrs(brief.addr, SIZE2), 1)
            mr2.close()
            st_moved = mm.move_pages(mm.page_addrs(brief.addr, SIZE2), 1)  # unpinned: moves
            v3 = procfs.vmstat()
        time.sleep(2.0)  # as the demo does before its Ctrl-C
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=900)  # the tracer drains its ring before exiting
        v_end = procfs.vmstat()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert (st_pinned < 0).all() and (st_plain == 1).all()
    assert (st_brief < 0).all() and (st_moved == 1).all()
    # the kernel's own account of the registered buffer's move
    assert (_delta(v0, v1, "pgmigrate_fail"), _delta(v0, v1, "pgmigrate_success")) == (NPAGES, 0)
    assert (_delta(v1, v2, "pgmigrate_fail"), _delta(v1, v2, "pgmigrate_success")) == (0, NPAGES)
    assert (_delta(v2, v3, "pgmigrate_fail"), _delta(v2, v3, "pgmigrate_success")) == (
        NPAGES2, NPAGES2)

    lines = [json.loads(x) for x in out.splitlines()]
    summary = lines[-1]
    assert summary["summary"] == "summary"
    totals = summary["totals"]
    assert totals["lost_events"] == 0, f"{totals['lost_events']} events lost"
    for k in VMSTAT_KEYS:
        assert totals[k] == _delta(v_start, v_end, k), (k, totals[k], _delta(v_start, v_end, k))

    me = os.getpid()
    fails = [x for x in lines if x.get("event") == "folio_fail"]
    assert {x["pfn"] for x in fails} == pinned_pfns | brief_pfns  # nothing else failed
    for pfns, key, addr, size in ((pinned_pfns, lkey, pinned.addr, SIZE),
                                  (brief_pfns, lkey2, brief.addr, SIZE2)):
        ours = [x for x in fails if x["pfn"] in pfns]
        # one event per pinned page: every one of them, once (retries are counted, not sent)
        assert sorted(x["pfn"] for x in ours) == sorted(pfns)
        for x in ours:
            (o,) = x["owners"]
            assert (o["pid"], o["lkey"], o["device"]) == (me, key, "rxe0"), x
            assert o["keys_from"] == "restrack_add", x
            assert f"lkey={key:#x}" in o["label"]
            assert (o["addr"], o["length"]) == (addr, size)
            assert x["reason"] == "syscall_or_cpuset"
            assert x["detail"]["stage"] == "unmap" and x["detail"]["errno"] == "EAGAIN", x
            assert x["detail"]["pincount"] >= 1 and x["detail"]["mapcount"] == 1, x
    assert totals["folio_failures"] == len(fails) == NPAGES + NPAGES2
    keyed = [x for x in lines if x.get("event") == "mr_keys" and x["pid"] == me]
    assert [(x["detail"]["lkey"], x["detail"]["device"], x["detail"]["length"])
            for x in keyed] == [(lkey, "rxe0", SIZE), (lkey2, "rxe0", SIZE2)]
    assert totals["folio_retries"] == (ATTEMPTS - 1) * (NPAGES + NPAGES2)

    # the migrate calls of this pid: the failed ones are the MRs' (they were "unowned")
    migrates = [x for x in lines if x.get("event") == "migrate" and x["pid"] == me]
    failed = [x for x in migrates if x["detail"]["failed"]]
    assert [x["detail"]["failed"] for x in failed] == [NPAGES, NPAGES2]
    assert [[(o["pid"], o["lkey"]) for o in x["owners"]] for x in failed] == [
        [(me, lkey)], [(me, lkey2)]]
    assert sum(x["detail"]["succeeded"] for x in migrates) == NPAGES + NPAGES2

    rows = [(r["pid"], r["lkey"], r["failures"], r["pfns"]) for r in summary["failures_by_owner"]]
    assert rows == [(me, lkey, NPAGES, NPAGES), (me, lkey2, NPAGES2, NPAGES2)]
    assert summary["migrate_by_reason"]["syscall_or_cpuset"] == {
        "succeeded": NPAGES + NPAGES2, "failed": NPAGES + NPAGES2}
    del pinned, plain, brief
