"""While guest a RDMA-WRITEs into guest b's MR, b moves that MR's pages (move_pages) and
offlines the block of its hot-plugged DIMM they sit in: both fail for the pin, b's tracer
attributes the failures (syscall_or_cpuset and memory_hotplug) to the MR and its process, its
totals equal /proc/vmstat's deltas, and the MR holds a's last write intact. Then b closes the
MR: a's next write completes with REM_ACCESS_ERR, which explain_wc names, and the block
offlines. Nothing stays pinned on either host.

b needs a DIMM: `ci/vm/pair --dimm 512M`. As in test_trace_offline, a filler takes the DIMM's
first block (kernel data) and a block may still refuse at once for unmovable kernel pages:
then b offers a fresh MR (a new rkey) and tries again, up to ATTEMPTS times.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest
from pair_util import DEVICE, ROLE, RcQp, crc, pattern
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
from rdmapin import Access, mm
from rdmapin.kernel import memblock
from rdmapin.rendezvous import RemoteMR

pytest_plugins = ("verbs_fixtures", "pair_fixtures")
pytestmark = [pytest.mark.pair, pytest.mark.rdma, pytest.mark.kprobes]

MR_PAGES = 2048  # 8 MiB
FILLER_PAGES = 200 * 2**20 // PAGE
ATTEMPTS = 4
OFFLINE_S = 2.0
RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE


def test_moving_and_offlining_the_target_of_remote_writes(peer, pins, tracer):
    from pyverbs.device import Context
    from pyverbs.pd import PD

    with Context(name=DEVICE) as ctx, PD(ctx) as vpd:
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        qp = RcQp(ctx, vpd)
        try:
            if ROLE == "a":
                _writer(peer, qp, pd)
            else:
                _target(peer, qp, pd, tracer)
        finally:
            qp.close()
            pd.close()


def _writer(peer, qp: RcQp, pd) -> None:
    src = rdmapin.empty(MR_PAGES * PAGE, "uint8")
    mr = pd.register(src, RW)
    qp.connect(peer.endpoint(qp.endpoint()))
    peer.exchange("connected")
    while (target := peer.recv("target", timeout=120)) is not None:
        remote = RemoteMR(*target)
        stop = threading.Event()
        last: dict = {"writes": 0}

        def write_loop(remote=remote, stop=stop, last=last):
            seed = 0
            while not stop.is_set():
                seed += 1
                c = pattern(src, seed)
                qp.write(mr, 0, len(src), remote)
                qp.wait()
                last.update(writes=seed, crc=c)

        t = threading.Thread(target=write_loop)
        t.start()
        peer.send("writing", None)
        try:
            peer.recv("stop", timeout=300)
        finally:
            stop.set()
            t.join()
        assert last["writes"] > 0, "no write completed while b moved and offlined"
        peer.send("last", last)
    remote = RemoteMR(*peer.recv("closed", timeout=120))
    qp.write(mr, 0, len(src), remote)
    with pytest.raises(rdmapin.WorkCompletionError) as exc:
        qp.wait()
    err = exc.value
    peer.send("refused", [err.status_name, str(err)])
    assert err.status_name == "REM_ACCESS_ERR", err
    assert "MR was closed" in str(err) and "rkey" in str(err)


def _target(peer, qp: RcQp, pd, t) -> None:
    from rdmapin.trace import Kind

    require(dimm_block_missing(), "--dimm 512M (ci/vm/pair --dimm 512M)")
    filler_buf, filler = buffer_on_node(FILLER_PAGES, 1)
    kept = []
    tried = []
    earlier = len(t.events())  # the session's tracer: what it saw before this test
    qp.connect(peer.endpoint(qp.endpoint()))
    peer.exchange("connected")
    for _ in range(ATTEMPTS):
        buf, arr = buffer_on_node(MR_PAGES, 1)
        mr = pd.register(arr, RW)
        kept.append((buf, arr, mr))
        pfns = pfns_of(arr)
        block, held = Counter((pfns // memblock.block_pages()).tolist()).most_common(1)[0]
        peer.send("target", [mr.addr, mr.rkey, mr.length])
        peer.recv("writing")
        v0, t0 = t.vmstat_and_totals()
        moved = mm.move_pages(mm.page_addrs(arr.ctypes.data, len(arr)), 0)
        rc, state, err = offline_block(block, OFFLINE_S)
        v1, t1 = t.vmstat_and_totals()
        peer.send("stop", None)
        last = peer.recv("last", timeout=120)
        assert crc(arr) == last["crc"], "the MR does not hold a's last write"
        deltas = assert_totals_match(v0, v1, t0, t1)
        assert (moved < 0).all(), f"pinned pages moved: {moved}"
        assert state == "online", f"memory{block} went {state} with an MR in it"
        tried.append({"block": block, "held": held, "offline_rc": rc, "err": err,
                      "fail": deltas.get("pgmigrate_fail"),
                      "success": deltas.get("pgmigrate_success")})
        if deltas["pgmigrate_fail"] > MR_PAGES:  # the offline tried, and failed, too
            break
    peer.send("target", None)
    assert deltas["pgmigrate_fail"] > MR_PAGES, f"no block refused for the pin: {tried}"
    events = t.events()[earlier:]

    fails = [e for e in events if e.kind == Kind.FOLIO_FAIL]
    ours = [e for e in fails if e.owners and e.owners[0].lkey == mr.lkey]
    assert {e.reason for e in ours} == {"syscall_or_cpuset", "memory_hotplug"}, Counter(
        (e.reason, e.owners[0].label() if e.owners else None) for e in fails)
    assert {e.pfn for e in ours} <= set(pfns.tolist())
    assert all(e.owners[0].pid == os.getpid() and e.owners[0].device == DEVICE
               for e in ours)
    migrates = [e for e in events if e.kind == Kind.MIGRATE and e.detail["failed"]]
    assert any(o.lkey == mr.lkey for e in migrates for o in e.owners)

    remote = [mr.addr, mr.rkey, mr.length]
    for _, _, m in kept:
        m.close()
    peer.send("closed", remote)
    status, message = peer.recv("refused", timeout=120)
    assert status == "REM_ACCESS_ERR", message
    rc, state, err = offline_block(block, 60.0)
    assert rc == 0 and state == "offline", (rc, state, err)
    (MEMORY / f"memory{block}" / "state").write_text("online")
    # The mappings go with their last references (an array view may still hold an export,
    # which mmap.close() refuses).
    kept.clear()
    del filler, filler_buf, arr, buf
