"""`rdmapin exporter` scraped by a real Prometheus server (Debian's 2.42, 1 s scrape interval,
rdmapin's alerting rules loaded) in the guest: a process registers an MR of each backing on
rxe0, its pages are moved to node 1 (pinned, they refuse), and what Prometheus' HTTP API
answers after a scan newer than that step agrees with the kernel: pinned bytes with the
registrar's VmPin, backing with what its allocations got, MR counts and bytes with the
kernel's list, the tracer's pgmigrate_fail with /proc/vmstat's delta, and the failed folios
are attributed to the registrar. One exporter (with the tracer: one bcc compile) and one
Prometheus serve the whole module; the exporter also writes its textfile."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from promserver import (
    DASHBOARD,
    RULES,
    Exporter,
    Prometheus,
    get,
    promtool_check_metrics,
    samples,
    typed_names,
)

from rdmapin import mm
from rdmapin.exporter.families import FAMILIES
from rdmapin.kernel import kcore, pagemap, procfs
from rdmapin.pages.descriptors import (
    DEVICE_PAGE_SIZES,
    find_best_pgsz,
    num_dma_blocks,
)

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm, pytest.mark.prometheus]

MIB = 1 << 20
KINDS = ("4k", "thp", "2m")
BACKING = {"4k": "4k", "thp": "thp", "2m": "hugetlb"}

REGISTRAR = textwrap.dedent("""
    import json, sys
    import rdmapin
    bufs = [rdmapin.alloc(2 << 20, pages=p, node=0) for p in ("4k", "thp", "2m")]
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        mrs = [pd.register(b) for b in bufs]
        print(json.dumps([{"addr": b.addr, "length": len(b), "backing": b.backing,
                           "lkey": m.lkey} for b, m in zip(bufs, mrs)]), flush=True)
        sys.stdin.readline()
""")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    """(exporter, prometheus, textfile dir) for the module."""
    work = tmp_path_factory.mktemp("exporter")
    textdir = work / "textfile"
    textdir.mkdir()
    exp = Exporter("--listen", "127.0.0.1:0", "--textfile", str(textdir), "--interval", "1",
                   "--slow-interval", "2", "--top", "5")
    prom = None
    try:
        exp.serving()
        exp.wait_for("tracer attached", 900)  # a bcc compile: minutes under TCG
        prom = Prometheus(work, [f"127.0.0.1:{exp.port}"])
        yield exp, prom, textdir
    finally:
        if prom is not None:
            prom.stop()
        rc = exp.stop()
    assert rc == 0, exp.stderr
    assert "Traceback" not in exp.stderr, exp.stderr


@pytest.fixture(scope="module")
def registrar(bed):
    """(pid, regions): a process holding an MR of each backing on rxe0, for the module."""
    child = subprocess.Popen([sys.executable, "-c", REGISTRAR], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        yield child.pid, json.loads(child.stdout.readline())
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=60)


def _after(prom: Prometheus, scan: str, t: float) -> None:
    """Wait until Prometheus holds a scrape of a ``scan`` scan that ended after ``t``."""
    prom.wait(f'rdmapin_scan_timestamp_seconds{{scan="{scan}"}} > {t}', timeout=300)


def test_registrar_pins_backing_and_failures_as_prometheus_sees_them(bed, registrar):
    _, prom, _ = bed
    pid, regions = registrar
    sel = f'pid="{pid}"'
    # Before: a scan newer than the registration, and the counters' values then.
    _after(prom, "processes", time.time())
    v0 = procfs.vmstat()
    fail0 = prom.value("rdmapin_trace_pgmigrate_fail_total")
    folio0 = prom.value("rdmapin_trace_folio_failures_total")
    failed_sel = 'rdmapin_trace_migrate_pages_total{result="failed",reason="syscall_or_cpuset"}'
    failed0 = sum(v for _, v in prom.query(failed_sel))
    # The workload's last step: move the registered pages to node 1 (they refuse).
    for r in regions:
        status = mm.move_pages(mm.page_addrs(r["addr"], r["length"]), 1, pid=pid)
        assert (status < 0).all(), f"pinned {r['backing']} pages moved: {status}"
    v1 = procfs.vmstat()
    step = time.time()
    _after(prom, "processes", step)
    fails = v1["pgmigrate_fail"] - v0["pgmigrate_fail"]
    assert fails > 0

    st = procfs.status(pid)
    assert prom.value(f"rdmapin_process_pinned_bytes{{{sel}}}") == st["VmPin"] == 6 * MIB
    assert prom.value(f"rdmapin_process_locked_bytes{{{sel}}}") == st["VmLck"]
    assert prom.value(f'rdmapin_process_mrs{{{sel},device="rxe0"}}') == 3
    assert prom.value(f'rdmapin_process_mr_bytes{{{sel},device="rxe0"}}') == 6 * MIB
    (labels, _), = prom.query(f"rdmapin_process_pinned_bytes{{{sel}}}")
    assert labels["comm"] == procfs.comm(pid)
    backing = {m["backing"]: v for m, v in
               prom.query(f"rdmapin_process_pinned_backing_bytes{{{sel}}}")}
    want = dict.fromkeys(("4k", "thp", "hugetlb", "other"), 0)
    for r in regions:
        assert r["backing"] in BACKING, f"{r['backing']}: THP partly refused here?"
        want[BACKING[r["backing"]]] += r["length"]
    assert backing == want
    blocks = {int(m["page_size_bytes"]): v for m, v in
              prom.query(f"rdmapin_process_dma_blocks{{{sel}}}")}
    expect = dict.fromkeys(DEVICE_PAGE_SIZES, 0)
    for r in regions:  # the kernel's rule over the pages' physical layout, read here
        pfns = pagemap.pfns(pagemap.read(pid, r["addr"], r["length"]))
        for size in DEVICE_PAGE_SIZES:
            best = find_best_pgsz(r["addr"], r["length"], pfns,
                                  sum(s for s in DEVICE_PAGE_SIZES if s <= size))
            expect[size] += num_dma_blocks(r["addr"], r["length"], best)
    assert blocks == expect
    assert expect[4096] == 3 * 512  # a 4 KiB-only device (rxe) maps every page
    # pin counts of 4 KiB pages alone (no large folio among them: e871c50 fixed an IndexError there)
    small = next(r for r in regions if r["backing"] == "4k")
    pfns = pagemap.pfns(pagemap.read(pid, small["addr"], small["length"]))
    assert kcore.pinned(pfns, np.zeros(len(pfns), dtype=bool)).all()

    # The tracer: pgmigrate_fail's delta as /proc/vmstat's, every failed folio the
    # registrar's (events are drained after the counters: wait for them).
    assert prom.value("rdmapin_trace_pgmigrate_fail_total") - fail0 == fails
    folios = prom.value("rdmapin_trace_folio_failures_total") - folio0
    assert folios > 0
    prom.wait(f"sum(rdmapin_trace_owner_folio_failures_total{{{sel}}}) >= {folios}", 120)
    owned = prom.value(f"sum(rdmapin_trace_owner_folio_failures_total{{{sel}}})")
    assert owned == folios
    lkeys = {m["lkey"] for m, _ in
             prom.query(f"rdmapin_trace_owner_folio_failures_total{{{sel}}}")}
    assert lkeys <= {hex(r["lkey"]) for r in regions} | {""}
    prom.wait(f"sum({failed_sel}) >= {failed0 + fails}", 120)
    assert prom.value(f"sum({failed_sel})") - failed0 == fails  # move_pages(2)'s reason

    # Zones: the pageblocks holding its pinned pages, once a zone scan has seen them.
    _after(prom, "zones", step)
    pinned = np.concatenate([pagemap.pfns(pagemap.read(pid, r["addr"], r["length"]))
                             for r in regions])
    held = len(np.unique(pinned // np.uint64(512)))
    assert prom.value("sum(rdmapin_zone_pinned_pageblocks)") >= held
    assert prom.value('rdmapin_doctor_check_status{check="rdma"}') == 0
    assert prom.value("rdmapin_tracer_up") == 1
    assert prom.value('rdmapin_scan_errors_total{scan="processes"}') == 0


def test_scrape_and_textfile_pass_promtool_and_the_contrib_files_work(bed, registrar):
    """promtool accepts a scrape, the textfile holds the same families; Prometheus loaded the
    rules and evaluates each without error; every dashboard query is valid PromQL for this
    Prometheus and names only metrics the scrape declares."""
    exp, prom, textdir = bed
    body = exp.scrape()
    if os.environ.get("RDMAPIN_RESULTS"):  # kept for people to read (the README's example)
        (Path(os.environ["RDMAPIN_RESULTS"]) / f"exporter-{os.uname().release}.prom"
         ).write_text(body)
    promtool_check_metrics(body)
    declared = typed_names(body)
    assert set(declared) == {f.name for f in FAMILIES}
    written = (textdir / "rdmapin.prom").read_text()  # the same exposition, a scan apart
    assert typed_names(written) == declared and samples(written)["rdmapin_tracer_up"]
    assert samples(body)["rdmapin_tracer_up"] == [({}, 1.0)]

    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {g["file"] for g in groups} == {str(RULES)}
    assert len(rules) == 5
    deadline = time.monotonic() + 60
    while any(r.get("lastEvaluation", "").startswith("0001") for r in rules):
        assert time.monotonic() < deadline, rules
        time.sleep(1)
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert all(r["health"] == "ok" for r in rules), rules

    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    for expr in exprs:
        names = set(re.findall(r"\brdmapin_[a-z0-9_]+", expr))
        assert names and names <= set(declared), (expr, names - set(declared))
        q = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        prom.api("query", query=q)  # status "success": Prometheus parsed and ran it
    assert get(f"{prom.base}/api/v1/targets")
