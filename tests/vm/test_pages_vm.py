"""The page tracker on registered memory in the guest: backing and counts agree with smaps,
/proc/kpageflags and VmPin exactly; registered pages refuse to move while mlocked ones move;
overlapping MRs are seen as a double pin; another process gets the same report."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from trace_util import buffer_on_node

import rdmapin
import rdmapin.pages as pages
from rdmapin import Access, mm
from rdmapin.kernel import kpageflags as kpf
from rdmapin.kernel import maps, pagemap, procfs, rdma_res
from rdmapin.kernel.kpageflags import KPF

pytest_plugins = ("verbs_fixtures",)

PAGE = mm.PAGE_SIZE
HUGE = 2 << 20
RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
TOP = Path(__file__).resolve().parents[2]
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _vma(addr: int, length: int) -> maps.Vma:
    vmas = maps.covering("self", addr, length)
    assert len(vmas) == 1 and (vmas[0].start, vmas[0].end) == (addr, addr + length), vmas
    return vmas[0]


def _flags(addr: int, length: int) -> np.ndarray:
    e = pagemap.read("self", addr, length)
    assert pagemap.present(e).all()
    return kpf.read(pagemap.pfns(e))


@pytest.mark.rdma
@pytest.mark.vm
@pytest.mark.parametrize("kind", ["4k", "thp", "2m"])
def test_registered_backing_agrees_with_smaps_kpageflags_and_vmpin(pd, pins, kind):
    size = 16 << 20
    if kind == "thp":  # the guest's own test memory: compact so 2M folios are there to get
        Path("/proc/sys/vm/compact_memory").write_text("1\n")
    buf = rdmapin.alloc(size, kind, dontfork=True)  # DONTFORK: a VMA of its own
    n = size // PAGE
    mr = pd.register(buf, RW)
    try:
        assert procfs.vm_pin() - pins[0] == n * PAGE  # VmPin: every 4K page, any backing
        assert procfs.foll_pins() - pins[1] == n
        r = mr.pages()
        vma = _vma(mr.addr, mr.length)
        f = _flags(mr.addr, mr.length)
        assert r.present == r.base_pages == n
        assert r.descriptors.struct_pages == r.descriptors.rxe_blocks == n
        assert r.mlocked * PAGE == vma.fields["Locked"] == 0
        heads = int(kpf.bit(f, KPF.COMPOUND_HEAD).sum())
        if kind == "4k":
            assert vma.kernel_page_size == PAGE and vma.fields["AnonHugePages"] == 0
            assert r.backing_pages["4k"] * PAGE == vma.fields["Rss"] == size
            assert r.backing_folios["4k"] == n and heads == 0
        elif kind == "thp":
            thp = vma.fields["AnonHugePages"]
            assert thp > 0, "the kernel gave no THP to a MADV_HUGEPAGE range after compaction"
            assert r.backing_pages["thp_2m"] * PAGE == thp == int(kpf.bit(f, KPF.THP).sum()) * PAGE
            assert r.backing_folios["thp_2m"] == thp // HUGE == heads
            assert (r.backing_pages["4k"] + r.backing_pages["thp_2m"]) * PAGE == vma.fields["Rss"]
        else:
            hugetlb = vma.fields["Private_Hugetlb"] + vma.fields["Shared_Hugetlb"]
            assert vma.kernel_page_size == HUGE and hugetlb == size
            assert r.backing_pages["hugetlb_2m"] * PAGE == hugetlb
            assert int(kpf.bit(f, KPF.HUGE).sum()) == n
            assert r.backing_folios["hugetlb_2m"] == size // HUGE == heads
            assert r.folio_sizes == {HUGE: size // HUGE}
        if r.backing_pages["4k"] == 0:  # all 2M folios: a 2M-capable device needs 8 blocks
            assert r.descriptors.best_page_size == HUGE
            assert r.descriptors.best_blocks == size // HUGE
        rec = pages.reconcile()
        assert rec.vm_pin == rec.mr_pinned == n * PAGE and rec.agrees, str(rec)
    finally:
        mr.close()


@pytest.mark.rdma
@pytest.mark.vm
def test_mlocked_pages_move_registered_pages_do_not(pd, pins):
    npages = 64
    plain = rdmapin.alloc(npages * PAGE, "4k", node=0, dontfork=True)
    reg = rdmapin.alloc(npages * PAGE, "4k", node=0, dontfork=True)
    assert libc.mlock(ctypes.c_void_p(plain.addr), ctypes.c_size_t(len(plain))) == 0
    mr = pd.register(reg, RW)
    try:
        r = pages.inspect(plain.addr, len(plain), detail=True)
        assert r.mlocked == npages
        # 6.1 moves mlocked folios to the unevictable LRU through a per-CPU batch
        # (mm/mlock.c mlock_fbatch), so PG_unevictable may trail PG_mlocked for a moment.
        assert r.unevictable <= npages
        assert r.vmas[0]["locked"] == npages * PAGE  # smaps Locked agrees
        assert pages.inspect(reg.addr, len(reg)).nodes == {0: npages}

        before = pages.snapshot(plain.addr, len(plain))
        v0 = procfs.vmstat()
        status = mm.move_pages(mm.page_addrs(plain.addr, len(plain)), 1)
        v1 = procfs.vmstat()
        assert (status == 1).all(), status
        moved = pages.compare(before)
        assert moved.moved == npages and moved.unchanged == 0
        assert v1["pgmigrate_success"] - v0["pgmigrate_success"] == npages
        assert pages.inspect(plain.addr, len(plain)).nodes == {1: npages}

        before = pages.snapshot(reg.addr, len(reg))
        v0 = procfs.vmstat()
        status = mm.move_pages(mm.page_addrs(reg.addr, len(reg)), 1)
        v1 = procfs.vmstat()
        assert (status < 0).all(), status
        stayed = pages.compare(before)
        assert stayed.moved == 0 and stayed.unchanged == npages
        assert v1["pgmigrate_fail"] - v0["pgmigrate_fail"] == npages
        assert pages.inspect(reg.addr, len(reg)).nodes == {0: npages}
    finally:
        mr.close()
        libc.munlock(ctypes.c_void_p(plain.addr), ctypes.c_size_t(len(plain)))


@pytest.mark.rdma
def test_overlapping_mrs_are_a_double_pin(pd, pins):
    buf = rdmapin.alloc(1 << 20, "4k")
    n = len(buf) // PAGE
    whole = pd.register(buf, RW)
    half = pd.register(buf[len(buf) // 2:], RW)
    try:
        rec = pages.reconcile()
        assert procfs.vm_pin() - pins[0] == (n + n // 2) * PAGE == rec.mr_pinned
        assert rec.overlap == n // 2 * PAGE
        assert rec.mr_unique == n * PAGE
        assert rec.agrees
        assert any("overlapping MRs" in f for f in rec.findings)
        assert procfs.foll_pins() - pins[1] == n + n // 2
        mine = {m.lkey: m for m in rdma_res.mrs(os.getpid())}
        assert {whole.lkey, half.lkey} <= set(mine)
        assert mine[half.lkey].length == len(buf) // 2
        if mine[half.lkey].iova is not None:  # CAP_NET_ADMIN: the kernel gives the address
            assert mine[half.lkey].iova == half.addr
    finally:
        half.close()
        whole.close()


@pytest.mark.rdma
def test_pins_no_mr_explains_are_reported(pd, pins):
    buf = rdmapin.alloc(256 << 10, "4k")
    mr = pd.register(buf, RW)
    try:
        rec = pages.reconcile()
        assert rec.agrees and not rec.unexplained
    finally:
        mr.close()


CHILD = textwrap.dedent("""
    import json, sys
    import rdmapin
    import rdmapin.pages as pages
    dev = rdmapin.open_device("rxe0")
    pd = dev.alloc_pd()
    buf = rdmapin.alloc(4 << 20, "thp", dontfork=True)
    mr = pd.register(buf, rdmapin.Access.LOCAL_WRITE)
    rep = pages.inspect(mr.addr, mr.length, detail=True).to_dict()
    print(json.dumps({"addr": mr.addr, "len": mr.length, "lkey": mr.lkey, "self": rep}),
          flush=True)
    sys.stdin.readline()
    mr.close()
""")


@pytest.mark.rdma
def test_other_process_report_and_reconcile():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=TOP)
    try:
        line = json.loads(child.stdout.readline())
        theirs = pages.inspect(line["addr"], line["len"], pid=child.pid, detail=True).to_dict()
        mine = line["self"]
        # Everything read from pagemap/kpageflags is identical; of the VMA, its identity and
        # page size (smaps counters are the kernel's, re-read at a different moment).
        vma_keys = ("start", "end", "perms", "path", "kernel_page_size", "anon_huge_pages")
        for d in (theirs, mine):
            d["vmas"] = [{k: v[k] for k in vma_keys} for v in d["vmas"]]
        assert theirs == mine, json.dumps([theirs, mine])
        rec = pages.reconcile(child.pid)
        assert rec.vm_pin == rec.mr_pinned == line["len"] and rec.agrees, str(rec)
        assert [m.lkey for m in rec.mrs] == [line["lkey"]]
        cli = subprocess.run([sys.executable, "-m", "rdmapin", "pages", "--pid", str(child.pid),
                              "--mr", hex(line["lkey"]), "-j"], capture_output=True, text=True,
                             cwd=TOP)
        if rec.mrs[0].addr is None:  # the kernel hid the IOVA
            assert cli.returncode == 1 and "did not give the address" in cli.stderr
        else:
            shown = json.loads(cli.stdout)
            assert shown.pop("mr").endswith(f"lkey {line['lkey']:#x}")
            shown["vmas"] = [{k: v[k] for k in vma_keys} for v in shown["vmas"]]
            assert shown == mine
        rows = subprocess.run([sys.executable, "-m", "rdmapin", "inspect", str(child.pid), "-j"],
                              capture_output=True, text=True, check=True, cwd=TOP).stdout
        row = json.loads(rows)
        assert row["vm_pin"] == row["mr_bytes"] == line["len"] and row["agrees"]
        assert row["mrs"] == 1
        # The backing is the child's own report of its MR, whether from the MR's range or
        # (6.1: no MR addresses) from the pages found pinned in the child.
        bp = mine["backing_pages"]
        want = {"4k": bp["4k"], "thp": bp["thp_2m"] + bp["thp_other"],
                "hugetlb": bp["hugetlb_2m"] + bp["hugetlb_1g"] + bp["hugetlb_other"]}
        want["other"] = line["len"] // PAGE - sum(want.values())
        assert row["backing"] == {k: v * PAGE for k, v in want.items()}, row
        assert row["backing_from"] == ("pinned pages" if rec.mrs[0].addr is None else "mrs")
    finally:
        child.stdin.close()
        child.wait(timeout=60)


@pytest.mark.rdma
@pytest.mark.vm
def test_pinned_pfns_of_a_range_under_migration(pd):
    """A pinned shmem page that move_pages(2) keeps trying to move reads in pagemap as a
    migration (swap) entry for a moment; ``pinned_pfns`` reads it as the pinned PFN, where
    plain ``pfns`` says 0 (the tracer lost owners that way: CLI test, stop 7)."""
    buf, arr = buffer_on_node(64, 0)  # MAP_SHARED: shmem, unmapped while migration tries
    stop = threading.Event()
    try:
        with pd.register(arr):
            pinned = pagemap.pfns(pagemap.read("self", arr.ctypes.data, len(arr)))
            assert (pinned != 0).all()
            addrs = mm.page_addrs(arr.ctypes.data, len(arr))

            def mover() -> None:
                while not stop.is_set():
                    mm.move_pages(addrs, 1)

            t = threading.Thread(target=mover, daemon=True)
            t.start()
            reads = migrating = 0
            deadline = time.monotonic() + 120
            while migrating < 3 and time.monotonic() < deadline:
                e = pagemap.read("self", arr.ctypes.data, len(arr))
                reads += 1
                migrating += int(pagemap.swapped(e).any())
                np.testing.assert_array_equal(pagemap.pinned_pfns(e), pinned)
            stop.set()
            t.join()
            assert migrating >= 3, f"no read in {reads} caught a page mid-migration"
            after = pagemap.pfns(pagemap.read("self", arr.ctypes.data, len(arr)))
            np.testing.assert_array_equal(after, pinned)
    finally:
        stop.set()
        del arr
        buf.close()
