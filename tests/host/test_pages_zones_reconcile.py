"""Zones of real pages against /proc/zoneinfo, and reconcile on a process without MRs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pagebufs import MADV_NOHUGEPAGE, PAGE, Buffer

import rdmapin.pages as pages
from rdmapin.errors import RdmapinError
from rdmapin.kernel import memblock, mmzone, pagemap, procfs

TOP = Path(__file__).resolve().parents[2]
ZONEINFO = """Node 0, zone      DMA
  pages free     3
        spanned  4095
        present  3998
  start_pfn:           1
Node 0, zone   Normal
        spanned  0
        present  0
  start_pfn:           0
Node 1, zone  Movable
        spanned  262144
  start_pfn:           524288
"""


def test_zone_spans_parse_skips_empty_zones():
    spans = [(z.node, z.name, z.start_pfn, z.spanned) for z in mmzone.zoneinfo(ZONEINFO)]
    assert spans == [(0, "DMA", 1, 4095), (1, "Movable", 524288, 262144)]


@pytest.mark.skipif(os.geteuid() != 0, reason="PFNs need root")
def test_page_zones_fall_inside_their_zoneinfo_span():
    with Buffer(2 << 20, advice=MADV_NOHUGEPAGE) as buf:
        buf.touch()
        pfns = pagemap.pfns(pagemap.read("self", buf.addr, buf.length))
        node, zone = memblock.lookup(pfns)
        assert (zone >= 0).all() and (node >= 0).all()
        spans = mmzone.zoneinfo()
        for z in np.unique(zone).tolist():
            sel = pfns[zone == z].astype(np.int64)
            nodes = set(node[zone == z].tolist())
            ok = np.zeros(len(sel), dtype=bool)
            for s in spans:
                if s.name == memblock.ZONE_NAMES[z] and s.node in nodes:
                    ok |= (sel >= s.start_pfn) & (sel < s.start_pfn + s.spanned)
            assert ok.all()
        r = pages.inspect(buf.addr, buf.length)
        assert sum(r.zones.values()) == buf.length // PAGE


def test_reconcile_without_mrs_agrees_with_vmpin():
    rec = pages.reconcile()
    assert rec.pid == os.getpid()
    assert rec.vm_pin == procfs.vm_pin() == rec.mr_pinned == 0
    assert rec.vm_lck == int(procfs.status()["VmLck"])
    assert rec.agrees and rec.overlap == 0 and rec.mrs == []
    assert "VmPin" in str(rec)


def test_inspect_cli_columns_fit_80():
    out = subprocess.run([sys.executable, "-m", "rdmapin", "inspect", str(os.getpid())],
                         capture_output=True, text=True, check=True, cwd=TOP).stdout
    head, row = out.splitlines()
    assert head.split()[:3] == ["PID", "COMM", "PINNED"] and len(head) < 80
    assert row.split()[0] == str(os.getpid())


def test_bad_flow_reconcile_of_missing_pid():
    with pytest.raises(RdmapinError, match="is the pid alive"):
        pages.reconcile(2**22 + 4321)


def test_io_uring_fixed_buffer_is_a_pin_no_mr_explains():
    """A real long-term pin outside RDMA (io_uring fixed buffer): VmPin grows by exactly its
    bytes, no MR accounts for them, reconcile says so and names the usual sources; the
    inspect row shows the pin and, where pin counts are readable, its backing."""
    import json

    from uring import FixedBuffer

    from rdmapin.kernel import kcore

    base = procfs.vm_pin()
    with Buffer(1 << 20, advice=MADV_NOHUGEPAGE) as buf:
        buf.touch()
        try:
            fixed = FixedBuffer(buf.addr, buf.length)
        except OSError as e:
            pytest.skip(f"io_uring unavailable here: {e}")
        with fixed:
            rec = pages.reconcile()
            assert rec.vm_pin - base == procfs.vm_pin() - base == buf.length
            assert rec.mr_pinned == 0 and rec.unexplained == rec.vm_pin and not rec.agrees
            assert any("io_uring" in f for f in rec.findings), rec.findings
            out = subprocess.run([sys.executable, "-m", "rdmapin", "inspect", str(os.getpid()),
                                  "-j"], capture_output=True, text=True, check=True,
                                 cwd=TOP).stdout
            row = json.loads(out)
            assert row["vm_pin"] == rec.vm_pin and row["mrs"] == 0 and not row["agrees"]
            if kcore.unavailable() is None:
                assert row["backing_from"] == "pinned pages"
                assert row["backing"]["4k"] == rec.vm_pin
            else:
                assert row["backing_from"].startswith("mrs (pins outside them not shown")
        assert procfs.vm_pin() == base
