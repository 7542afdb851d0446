"""An offline refused under a pin, as a fleet's Prometheus sees it: the exporter's tracer
counts the memory_hotplug migration failures (their delta equal to /proc/vmstat's
pgmigrate_fail delta) and attributes the failed folios to the MR of the process holding it,
queried from a real Prometheus scraping every second. (A refused isolation is not asked for:
in the 6.12 guest none was attributed to the holder within 5 minutes, while on 6.1 one was;
offline_pages keeps migrating while a pinned page is still on the LRU, and only then tests the
range's isolation.)

Needs a hot-plugged DIMM as node 1 (`ci/vm/run --dimm 512M`), like test_trace_offline.py:
the block is tried for 2 s, then interrupted (trace_util.offline_block)."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from promserver import Exporter, Prometheus, prefer_node0
from trace_util import PAGE, buffer_on_node, dimm_block_missing, offline_block, pfns_of, require

import rdmapin
from rdmapin.kernel import memblock, procfs

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm, pytest.mark.dimm,
              pytest.mark.prometheus]

FILLER_PAGES = 200 * 2**20 // PAGE  # as test_trace_offline: the DIMM's kernel block filled
MR_PAGES = 2048
ATTEMPT_S = 2.0
FAILED = 'rdmapin_trace_migrate_pages_total{reason="memory_hotplug",result="failed"}'
OWNER = "rdmapin_trace_owner_folio_failures_total{{{}}}"


def _total(prom: Prometheus, expr: str) -> float:
    return sum(v for _, v in prom.query(expr))


def test_an_offline_refused_under_a_pin_reaches_prometheus_attributed(tmp_path):
    require(dimm_block_missing(), "--dimm 512M")
    me = f'pid="{os.getpid()}"'
    # The exporter (a bcc compile) and Prometheus first, their memory on node 0: kernel
    # memory of theirs left in the DIMM's blocks made every offline refuse at once.
    exp = Exporter("--interval", "1", "--slow-interval", "3600", "--top", "5",
                   preexec=prefer_node0)
    prom = filler = filler_buf = None
    kept = []
    try:
        exp.serving()
        exp.wait_for("tracer attached", 900)
        prom = Prometheus(tmp_path, [f"127.0.0.1:{exp.port}"], preexec=prefer_node0)
        filler_buf, filler = buffer_on_node(FILLER_PAGES, 1)
        with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
            for _ in range(6):  # a block may refuse at once for kernel pages: try another
                buf, arr = buffer_on_node(MR_PAGES, 1)
                mr = pd.register(arr)
                kept.append((buf, arr, mr))
                block = Counter((pfns_of(arr) // memblock.block_pages()).tolist()
                                ).most_common(1)[0][0]
                prom.wait(f'rdmapin_scan_timestamp_seconds{{scan="processes"}} > {time.time()}')
                before = {"fail": _total(prom, FAILED), "owner": _total(prom, OWNER.format(me))}
                v0 = procfs.vmstat()
                _rc, state, _err = offline_block(block, ATTEMPT_S)
                v1 = procfs.vmstat()
                assert state == "online", f"memory{block} went {state} with an MR in it"
                fails = v1["pgmigrate_fail"] - v0["pgmigrate_fail"]
                if fails > 0:
                    break
            assert fails > 0, "no block refused for the pin"
            step = time.time()
            prom.wait(f'rdmapin_scan_timestamp_seconds{{scan="processes"}} > {step}')
            # counters are exact at once; the attribution follows the drained events
            prom.wait(f"sum({FAILED}) >= {before['fail'] + fails}", 300)
            assert _total(prom, FAILED) - before["fail"] == fails
            prom.wait(f"sum({OWNER.format(me)}) > {before['owner']}", 300)
            lkeys = {m["lkey"] for m, _ in prom.query(OWNER.format(me))}
            assert hex(mr.lkey) in lkeys
            assert prom.value(f"rdmapin_process_mrs{{{me},device=\"rxe0\"}}") == len(kept)
            for _, _, m in kept:
                m.close()
    finally:
        for _, _, m in kept:
            m.close()
        if prom is not None:
            prom.stop()
        rc_exp = exp.stop()
        del filler, filler_buf  # unmapped with its last reference (its array's export too)
    assert rc_exp == 0 and "Traceback" not in exp.stderr, exp.stderr
