"""A registered region spread over many pageblocks shows up in the physical map as exactly
the pageblocks its PFNs fall in, through this process's registry and, from another
process, through the kernel's MR list and the pages' pin counts."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rdmapin
from rdmapin.kernel import arch, mmzone, pagemap
from rdmapin.physmap import blocks, pins
from rdmapin.physmap.classify import PageClass

pytestmark = [pytest.mark.rdma, pytest.mark.vm]
PAGE = arch.PAGE_SIZE
NPAGES = 64
FILLER_PER_PAGE = 512  # fault a pageblock's worth of filler between two target pages


@pytest.fixture
def spread_buffer():
    """64 pages whose physical pages are far apart: each is faulted right after 2 MiB of
    filler, so consecutive target pages come from different pageblocks."""
    target = mmap.mmap(-1, NPAGES * PAGE)
    filler = mmap.mmap(-1, NPAGES * FILLER_PER_PAGE * PAGE)
    for m in (target, filler):
        m.madvise(mmap.MADV_NOHUGEPAGE)
    t = np.frombuffer(target, dtype=np.uint8)
    f = np.frombuffer(filler, dtype=np.uint8).reshape(NPAGES, FILLER_PER_PAGE * PAGE)
    for i in range(NPAGES):
        f[i, ::PAGE] = 1
        t[i * PAGE] = 1
    del f
    filler.close()  # the filler's pages go back to the free lists around the target's
    yield t  # the target mmap is unmapped when the last array view of it goes away


def _pinned_blocks_of(arr: np.ndarray, order: int) -> set[int]:
    pfns = pagemap.pfns(pagemap.read("self", arr.ctypes.data, len(arr)))
    assert np.all(pfns != 0), "every page of the MR must be present"
    return set((pfns >> np.uint64(order)).tolist())


def test_pinned_pageblocks_equal_the_mrs_pfn_blocks(spread_buffer):
    order = mmzone.pageblock_order()
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        mr = pd.register(spread_buffer)
        try:
            expect = _pinned_blocks_of(spread_buffer, order)
            assert len(expect) > NPAGES // 2, "the pages should be spread out"
            pinset = pins.collect()
            pm = blocks.build(pinset)
            t = pm.totals()
            assert t["pinned_pages"] == NPAGES
            assert t["pinned_blocks"] == len(expect)
            assert set(np.flatnonzero(pm.block_class == PageClass.PINNED).tolist()) == expect
            assert any(s.what.startswith(f"mr lkey={mr.lkey:#x}") for s in pinset.sources)
            # Each pinned block is counted in the zone its PFNs are in.
            assert sum(s.pinned_blocks for s in pm.summaries) == len(expect)
            # The boot-time hugetlb pool is exactly its pageblocks (no 1 GiB pages here).
            nr = int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
                     .read_text())
            assert sum(s.pageblocks["hugetlb"] for s in pm.summaries) == nr
            assert sum(s.pages["hugetlb"] for s in pm.summaries) == nr << order
        finally:
            mr.close()
    # Closed: the same pages are no longer pinned in a fresh map.
    pm = blocks.build(pins.collect())
    assert pm.totals()["pinned_pages"] == 0


def test_another_process_sees_the_pins_through_the_kernel(spread_buffer):
    """`rdmapin fragmap -j` run as a child finds this process's MR via rdma res + kcore."""
    order = mmzone.pageblock_order()
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd, \
            pd.register(spread_buffer):
        expect = _pinned_blocks_of(spread_buffer, order)
        proc = subprocess.run([sys.executable, "-m", "rdmapin", "fragmap", "-j"],
                              capture_output=True, text=True, check=True)
        summary = json.loads(proc.stdout.splitlines()[-1])
        assert summary["type"] == "summary"
        assert summary["pinned_pages"] == NPAGES, summary["notes"]
        assert summary["pinned_blocks"] == len(expect)
        assert {s["pid"] for s in summary["pin_sources"]} == {os.getpid()}
