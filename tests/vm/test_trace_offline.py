"""Memory offline of the block holding an MR's pages fails while the MR lives: the tracer
reports the migration failures (reason memory_hotplug) and the busy isolation, names the MR,
and its totals equal /proc/vmstat's deltas. After the MR is closed the same offline succeeds.

Needs a hot-plugged DIMM as node 1:
`ci/vm/run --dimm 512M -- pytest tests/vm/test_trace_offline.py`.
The DIMM's first block holds kernel data, so a filler bound to node 1 takes it first and the
MR lands in a clean, offlinable block (VM-NOTES). The kernel retries offlining a pinned block
until a signal arrives, so each attempt runs in a child that is interrupted after a bound.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from trace_util import (
    MEMORY,
    PAGE,
    assert_totals_match,
    buffer_on_node,
    dimm_block_missing,
    offline_block,
    pfns_of,
    require,
)

import rdmapin
from rdmapin.kernel import memblock
from rdmapin.trace import Kind, Tracer

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm, pytest.mark.dimm]
FILLER_PAGES = 200 * 2**20 // PAGE
MR_PAGES = 2048  # 8 MiB, as measured in VM-NOTES
ATTEMPT_S = 2.0


@pytest.fixture(autouse=True)
def _dimm():
    require(dimm_block_missing(), "--dimm 512M")


def test_offlining_a_pinned_block_fails_naming_the_mr_and_succeeds_after_close():
    """A block can also refuse at once for unmovable kernel pages (the DIMM is onlined as
    kernel memory): then the MR moves to a fresh buffer, up to a few times, until the
    refusal is the pinned pages' (migrations attempted and failed)."""
    filler_buf, filler = buffer_on_node(FILLER_PAGES, 1)
    block_pages = memblock.block_pages()
    kept = []
    tried = []
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        try:
            with Tracer() as t:
                for _ in range(4):
                    buf, arr = buffer_on_node(MR_PAGES, 1)
                    mr = pd.register(arr)
                    kept.append((buf, arr, mr))
                    pfns = pfns_of(arr)
                    block, held = Counter((pfns // block_pages).tolist()).most_common(1)[0]
                    v0, t0 = t.vmstat_and_totals()
                    rc, state, err = offline_block(block, ATTEMPT_S)
                    v1, t1 = t.vmstat_and_totals()
                    deltas = assert_totals_match(v0, v1, t0, t1)
                    assert state == "online", f"memory{block} went {state} with an MR in it"
                    tried.append((block, held, rc, err, deltas.get("pgmigrate_fail")))
                    if deltas["pgmigrate_fail"] > 0:
                        break
                events = t.events()
            assert deltas["pgmigrate_fail"] > 0, f"no block refused for the pin: {tried}"

            fails = [e for e in events if e.kind == Kind.FOLIO_FAIL]
            assert fails and {e.reason for e in fails} == {"memory_hotplug"}
            ours = [e for e in fails if e.owners and e.owners[0].lkey == mr.lkey]
            assert ours, "no failure attributed to the MR"
            assert {e.pfn for e in ours} <= set(pfns.tolist())
            assert all(e.owners[0].pid == os.getpid() for e in ours)
            migrates = [e for e in events if e.kind == Kind.MIGRATE
                        and e.reason == "memory_hotplug" and e.detail["failed"]]
            assert sum(e.detail["failed"] for e in migrates) == deltas["pgmigrate_fail"]
            assert any(o.lkey == mr.lkey for e in migrates for o in e.owners)
            first, last = block * block_pages, (block + 1) * block_pages
            busy = [e for e in events if e.kind == Kind.ISOLATION_TEST and e.detail["busy"]]
            for e in busy:
                assert first <= e.pfn and e.pfn_end <= last
        finally:
            for _, _, m in kept:
                m.close()
        rc, state, err = offline_block(block, 60.0)
        assert rc == 0 and state == "offline", (rc, state, err)
        (MEMORY / f"memory{block}" / "state").write_text("online")
    kept.clear()
    del filler
    filler_buf.close()
