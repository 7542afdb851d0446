"""Region reports of real memory of this process, checked exactly against smaps and
/proc/kpageflags; another process's report equals its own."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pagebufs import (
    HUGE_2M,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    PAGE,
    Buffer,
    fs_type,
    libc,
    thp_mode,
)

import rdmapin.pages as pages
from rdmapin.errors import RdmapinError
from rdmapin.kernel import kpageflags as kpf
from rdmapin.kernel import maps, pagemap, procfs
from rdmapin.kernel.kpageflags import KPF

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="PFNs and page flags need root")
TOP = Path(__file__).resolve().parents[2]


def _vma(addr: int, length: int) -> maps.Vma:
    vmas = maps.covering("self", addr, length)
    assert len(vmas) == 1 and (vmas[0].start, vmas[0].end) == (addr, addr + length), vmas
    return vmas[0]


def _flags(addr: int, length: int) -> np.ndarray:
    e = pagemap.read("self", addr, length)
    return kpf.read(pagemap.pfns(e)[pagemap.present(e)])


def test_4k_anon_matches_smaps_and_kpageflags():
    with Buffer(4 << 20, advice=MADV_NOHUGEPAGE) as buf:
        buf.touch()
        r = pages.inspect(buf.addr, buf.length)
        vma = _vma(buf.addr, buf.length)
        n = buf.length // PAGE
        assert r.base_pages == r.present == n and r.not_present == 0
        assert vma.kernel_page_size == PAGE and vma.fields["AnonHugePages"] == 0
        assert r.backing_pages["4k"] * PAGE == vma.fields["Rss"] == vma.fields["Anonymous"]
        assert r.backing_folios["4k"] == n and r.folio_sizes == {PAGE: n}
        f = _flags(buf.addr, buf.length)
        assert int((kpf.bit(f, KPF.ANON) & ~kpf.bit(f, KPF.COMPOUND_HEAD)
                    & ~kpf.bit(f, KPF.COMPOUND_TAIL)).sum()) == r.backing_pages["4k"]
        assert r.descriptors.struct_pages == r.descriptors.rxe_blocks == n
        assert sum(r.nodes.values()) == sum(r.zones.values()) == n
        assert r.runs >= 1 and 1 <= r.longest_run <= n
        assert r.mlocked == 0


@pytest.mark.skipif(thp_mode() == "never", reason="THP disabled on this kernel")
def test_thp_matches_anonhugepages():
    with Buffer(16 << 20, align=HUGE_2M, advice=MADV_HUGEPAGE) as buf:
        buf.touch()
        r = pages.inspect(buf.addr, buf.length)
        vma = _vma(buf.addr, buf.length)
        thp = vma.fields["AnonHugePages"]
        assert thp > 0, "the kernel granted no THP to a MADV_HUGEPAGE region"
        assert r.backing_pages["thp_2m"] * PAGE == thp
        assert r.backing_folios["thp_2m"] == thp // HUGE_2M
        assert r.folio_sizes.get(HUGE_2M, 0) == thp // HUGE_2M
        assert (r.backing_pages["4k"] + r.backing_pages["thp_2m"]) * PAGE == vma.fields["Rss"]
        f = _flags(buf.addr, buf.length)
        assert int(kpf.bit(f, KPF.THP).sum()) * PAGE == thp
        assert int(kpf.bit(f, KPF.COMPOUND_HEAD).sum()) == thp // HUGE_2M
        d = r.descriptors
        assert d.folios == r.backing_folios["thp_2m"] + r.backing_folios["4k"]
        if thp == buf.length:  # all 2M folios: VA and PA both 2M-aligned per folio
            assert d.layout_max_page_size >= HUGE_2M
            assert d.best_page_size == HUGE_2M and d.best_blocks == buf.length // HUGE_2M
            assert {c.page_size: c.blocks for c in d.per_size}[HUGE_2M] == 8
            # A range cutting two folios in half: both are still seen whole (2 MiB each).
            cut = pages.inspect(buf.addr + HUGE_2M // 2, HUGE_2M)
            assert cut.folio_sizes == {HUGE_2M: 2}
            assert cut.backing_folios["thp_2m"] == 2
            assert cut.backing_pages["thp_2m"] == HUGE_2M // PAGE
            # VA and PA share the 1 MiB offset into each folio, and the only break in
            # physical contiguity is at a 2M-aligned VA: 2M pages fit, as 2 blocks.
            assert cut.descriptors.best_page_size == HUGE_2M
            assert cut.descriptors.best_blocks == 2


@pytest.mark.skipif(thp_mode() == "never", reason="THP disabled on this kernel")
def test_thp_whose_pmd_mprotect_split_is_reported_as_mapped_by_ptes():
    """mprotect of one page of a THP splits its PMD but not the folio: kpageflags still says
    THP for all 512 pages, smaps' AnonHugePages drops by 2 MiB. The report names the gap."""
    with Buffer(8 << 20, align=HUGE_2M, advice=MADV_HUGEPAGE) as buf:
        buf.touch()
        f = _flags(buf.addr, buf.length)
        heads = np.flatnonzero(kpf.bit(f, KPF.COMPOUND_HEAD) & kpf.bit(f, KPF.THP))
        chunk = next((int(i) for i in heads if i % (HUGE_2M // PAGE) == 0), None)
        assert chunk is not None, "the kernel granted no 2 MiB THP to a MADV_HUGEPAGE region"
        whole = pages.inspect(buf.addr, buf.length, detail=True)
        assert whole.thp_pte_mapped == 0
        assert "by PTEs" not in str(whole)
        split = buf.addr + chunk * PAGE
        assert libc.mprotect(split, PAGE, mmap.PROT_READ) == 0, ctypes.get_errno()
        r = pages.inspect(buf.addr, buf.length, detail=True)
        vmas = maps.covering("self", buf.addr, buf.length)
        thp = int(kpf.bit(_flags(buf.addr, buf.length), KPF.THP).sum()) * PAGE
        assert thp == int(kpf.bit(f, KPF.THP).sum()) * PAGE  # the folio stayed whole
        assert r.thp_pte_mapped == thp - sum(v.fields["AnonHugePages"] for v in vmas) == HUGE_2M
        by_vma = {v["start"]: v["thp_pte_mapped"] for v in r.vmas}
        assert by_vma[split] == PAGE and by_vma[split + PAGE] == HUGE_2M - PAGE
        assert "(+1 THP page by PTEs)" in str(r) and "(+511 THP pages by PTEs)" in str(r)
        # A range that covers the split VMA only in part cannot say (smaps is per VMA).
        part = pages.inspect(split + PAGE, PAGE, detail=True)
        assert part.thp_pte_mapped is None


def test_zero_page_is_not_rss():
    with Buffer(1 << 20, advice=MADV_NOHUGEPAGE) as buf:
        buf.touch(write=False)
        r = pages.inspect(buf.addr, buf.length)
        n = buf.length // PAGE
        assert r.present == n
        assert r.backing_pages["zero"] == n and r.backing_folios["zero"] == 1
        assert _vma(buf.addr, buf.length).fields["Rss"] == 0  # smaps skips the zero page
        assert kpf.bit(_flags(buf.addr, buf.length), KPF.ZERO_PAGE).all()
        assert len(set(r.pfns.tolist())) == 1 and r.runs == n


def test_shmem_and_file_backing(tmp_path):
    n = 1 << 20
    shm = mmap.mmap(-1, n)  # MAP_SHARED|MAP_ANONYMOUS: shmem
    arr = np.frombuffer(shm, dtype=np.uint8)
    arr[::PAGE] = 1
    addr = arr.ctypes.data
    r = pages.inspect(addr, n)
    assert r.backing_pages["shmem"] == n // PAGE
    assert r.backing_pages["shmem"] * PAGE == _vma(addr, n).fields["Rss"]
    del arr
    shm.close()

    path = tmp_path / "data"
    path.write_bytes(os.urandom(n))
    with path.open("rb") as fh:
        fm = mmap.mmap(fh.fileno(), n, prot=mmap.PROT_READ)
        arr = np.frombuffer(fm, dtype=np.uint8)
        int(arr[::PAGE].sum())
        addr = arr.ctypes.data
        r = pages.inspect(addr, n)
        vma = _vma(addr, n)
        fs = fs_type(path)
        assert vma.path == str(path)
        cached = r.backing_pages["file"] + r.backing_pages["shmem"]
        assert cached * PAGE == vma.fields["Rss"] == r.present * PAGE
        if fs == "tmpfs":
            assert r.backing_pages["shmem"] == r.present
        elif fs in ("ext4", "xfs", "btrfs"):
            assert r.backing_pages["file"] == r.present  # (overlayfs: whichever is below)
        assert not kpf.bit(_flags(addr, n), KPF.ANON).any()
        del arr
        fm.close()


def test_mlock_counts_match_locked_and_vmlck():
    with Buffer(1 << 20, advice=MADV_NOHUGEPAGE) as buf:
        lck0 = int(procfs.status()["VmLck"])
        assert libc.mlock(buf.addr, buf.length) == 0
        try:
            r = pages.inspect(buf.addr, buf.length, detail=True)
            n = buf.length // PAGE
            assert r.mlocked == r.unevictable == n == r.present
            assert _vma(buf.addr, buf.length).fields["Locked"] == buf.length
            assert int(procfs.status()["VmLck"]) - lck0 == buf.length
            assert r.vmas[0]["locked"] == buf.length
        finally:
            libc.munlock(buf.addr, buf.length)
        assert pages.inspect(buf.addr, buf.length).mlocked == 0


def test_not_present_pages_and_snapshot_compare():
    with Buffer(128 * PAGE, advice=MADV_NOHUGEPAGE) as buf:
        buf.view[: 64 * PAGE: PAGE] = 1
        r = pages.inspect(buf.addr, buf.length, detail=True)
        assert (r.present, r.not_present) == (64, 64)
        assert not r.descriptors_complete
        assert r.vmas[0]["rss"] == 64 * PAGE

        before = pages.snapshot(buf.addr, buf.length)
        same = pages.compare(before)
        assert (same.moved, same.unchanged, same.appeared, same.vanished) == (0, 64, 0, 0)
        assert libc.madvise(buf.addr, buf.length, MADV_DONTNEED) == 0
        gone = pages.compare(before)
        assert (gone.moved, gone.unchanged, gone.vanished) == (0, 0, 64)
        buf.touch()
        back = pages.compare(before)
        assert back.moved + back.unchanged == 64 and back.appeared == 64
        assert len(back.moved_addrs) == back.moved


CHILD = textwrap.dedent("""
    import ctypes, json, mmap, sys
    import numpy as np
    import rdmapin.pages as pages
    n = 8 << 20
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(m, dtype=np.uint8)
    addr = a.ctypes.data
    # Own VMA flags, so later allocations cannot merge into this mapping.
    assert ctypes.CDLL("libc.so.6").madvise(ctypes.c_void_p(addr), ctypes.c_size_t(n), 15) == 0
    a[: n // 2: 4096] = 1
    print(json.dumps({"addr": addr, "len": n,
                      "self": pages.inspect(addr, n, detail=True).to_dict()}),
          flush=True)
    sys.stdin.readline()
""")


def test_other_process_gets_the_same_report():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=TOP)
    try:
        line = json.loads(child.stdout.readline())
        theirs = pages.inspect(line["addr"], line["len"], pid=child.pid, detail=True).to_dict()
        assert theirs == line["self"]
        assert theirs["present"] == theirs["not_present"] == (8 << 20) // PAGE // 2
        cli = subprocess.run(
            [sys.executable, "-m", "rdmapin", "pages", "--pid", str(child.pid), "--addr",
             hex(line["addr"]), "--len", "8M", "-j"], capture_output=True, text=True,
            check=True, cwd=TOP)
        shown = json.loads(cli.stdout)
        assert shown.pop("mr") is None
        assert shown == theirs
        text = subprocess.run(
            [sys.executable, "-m", "rdmapin", "pages", "--pid", str(child.pid), "--addr",
             hex(line["addr"]), "--len", "8M"], capture_output=True, text=True, check=True,
            cwd=TOP).stdout
        assert f"present {theirs['present']}," in text and "DMA BLOCKS" in text
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_bad_flow_unmapped_range_and_cli_error():
    with pytest.raises(RdmapinError, match="nothing mapped"):
        pages.inspect(0x1000, PAGE)
    cli = subprocess.run([sys.executable, "-m", "rdmapin", "pages", "--addr", "0x1000"],
                         capture_output=True, text=True, cwd=TOP)
    assert cli.returncode == 1
    assert cli.stderr.startswith("rdmapin: error: give --addr and --len together")
    assert "Traceback" not in cli.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="PFNs and page flags need root")
def test_a_128_tib_range_of_a_small_process_reads_only_what_is_mapped():
    """Memory and time follow what is mapped, not the requested length: 2^47 bytes of this
    (small) process in a subprocess, peak RSS under 200 MiB, seconds; the report says how
    much of the range was mapped, equal to /proc/PID/maps read around it."""
    import subprocess
    import sys

    code = (
        "import json, time\n"
        "from rdmapin import pages\n"
        "def hwm():  # VmHWM: this mm's peak (ru_maxrss carries the parent's across exec)\n"
        "    return int(next(x for x in open('/proc/self/status')\n"
        "                    if x.startswith('VmHWM:')).split()[1])\n"
        "def mapped():\n"
        "    total = 0\n"
        "    for line in open('/proc/self/maps'):\n"
        "        lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "        total += max(0, min(hi, 1 << 47) - lo)\n"
        "    return total\n"
        "before = mapped(); t = time.monotonic()\n"
        "r = pages.inspect(0, 1 << 47)\n"
        "took = time.monotonic() - t; after = mapped()\n"
        "print(json.dumps({'mapped': r.mapped, 'before': before, 'after': after,\n"
        "    'base_pages': r.base_pages, 'present': r.present, 'took': took,\n"
        "    'hwm_kib': hwm(),\n"
        "    'descriptors': r.descriptors is None, 'limits': r.limits}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    res = json.loads(out)
    assert res["base_pages"] == (1 << 47) // PAGE
    assert res["mapped"] in (res["before"], res["after"])
    assert 0 < res["present"] <= res["mapped"] // PAGE
    assert res["hwm_kib"] < 200 << 10
    assert res["took"] < 30
    assert res["descriptors"] and "only its" in res["limits"][0]
