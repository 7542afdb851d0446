"""Long-term pinning out of ZONE_MOVABLE: registering a buffer whose pages sit in
ZONE_MOVABLE makes the kernel migrate them first (reason longterm_pin); the tracer shows
those migrations, their time, and the registering process, and its totals equal
/proc/vmstat's deltas.

Needs `ci/vm/run --append movablecore=1G -- pytest tests/vm/test_trace_movable.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from trace_util import assert_totals_match, pfns_of, require

import rdmapin
from rdmapin.kernel import memblock, mmzone
from rdmapin.trace import Kind, Tracer

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm, pytest.mark.movable]
NPAGES = 4096  # 16 MiB
MOVABLE = memblock.ZONE_NAMES.index("Movable")


def _movable_missing() -> str | None:
    if "movablecore=" not in Path("/proc/cmdline").read_text():
        return "no movablecore= on the kernel command line"
    if not any(z.name == "Movable" for z in mmzone.zoneinfo()):
        return "no populated ZONE_MOVABLE"
    return None


@pytest.fixture(autouse=True)
def _movable():
    require(_movable_missing(), "--append movablecore=1G")


def test_registering_movable_pages_migrates_them_first_attributed_to_the_registrar():
    import mmap

    buf = mmap.mmap(-1, NPAGES * 4096)
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr[::4096] = 1
    _, zone = memblock.lookup(pfns_of(arr))
    in_movable = int((zone == MOVABLE).sum())
    assert in_movable > 0, "no page of the buffer landed in ZONE_MOVABLE"
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd, Tracer() as t:
        v0, t0 = t.vmstat_and_totals()
        mr = pd.register(arr)
        try:
            v1, t1 = t.vmstat_and_totals()
            events = t.events()
            _, zone_after = memblock.lookup(pfns_of(arr))
        finally:
            mr.close()
    deltas = assert_totals_match(v0, v1, t0, t1)
    assert not (zone_after == MOVABLE).any()
    moves = [e for e in events if e.kind == Kind.MIGRATE and e.reason == "longterm_pin"]
    assert sum(e.detail["succeeded"] for e in moves) == in_movable == deltas["pgmigrate_success"]
    for e in moves:
        assert e.pid == os.getpid()
        assert e.detail["latency_us"] is not None and e.detail["latency_us"] > 0
        (o,) = e.owners
        assert (o.pid, o.addr, o.length) == (os.getpid(), arr.ctypes.data, len(arr))
    gets = [e for e in events if e.kind == Kind.UMEM_GET]
    assert [g.owners[0].lkey for g in gets] == [mr.lkey]
    del arr
    buf.close()
