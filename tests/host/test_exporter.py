"""`rdmapin exporter` without an RDMA device: the families' conventions and bounded series
(synthetic scans), the contrib rules (promtool check and unit tests) and dashboard, the
textfile collector's file read back while it is rewritten (never torn), and the bad flows that
need no device (a port in use, a hostile --listen). The guest suite (tests/vm/
test_exporter_vm.py) runs it against a real Prometheus with real MRs."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from promserver import DASHBOARD, RULES, TOP, Exporter, promtool_check_metrics, samples, typed_names

from rdmapin.exporter import families, textfile
from rdmapin.exporter.families import FAMILIES, OTHER, UNOWNED, View
from rdmapin.exporter.scan import BACKINGS, ProcessFacts, ProcessScan
from rdmapin.kernel.printable import escape, unescape
from rdmapin.pages.descriptors import DEVICE_PAGE_SIZES

README = TOP / "README.md"


def _facts(pid: int, comm: str, pinned: int, **kw) -> ProcessFacts:
    backing = dict.fromkeys(BACKINGS, 0)
    backing["4k"] = pinned
    return ProcessFacts(pid=pid, comm=comm, pinned=pinned, locked=kw.get("locked", 0),
                        memlock_limit=kw.get("limit"), mrs={"rxe0": (1, pinned)},
                        backing=kw.get("backing", backing),
                        dma_blocks=kw.get("blocks", dict.fromkeys(DEVICE_PAGE_SIZES, 1)))


def _scan(rows: list[ProcessFacts]) -> ProcessScan:
    return ProcessScan(at=1.5e9, seconds=0.25, processes=tuple(rows), foll_pinned=42,
                       scanned=100, unreadable=1, vanished=0)


@pytest.mark.pure
def test_every_family_follows_the_conventions():
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    for f in FAMILIES:
        assert re.fullmatch(r"rdmapin_[a-z0-9_]+", f.name), f.name
        assert f.help and "\n" not in f.help
        assert f.kind in ("gauge", "counter")
        assert f.name.endswith("_total") == (f.kind == "counter"), f.name
        assert not re.search(r"_(kib|mib|kb|mb|ms|us|pages_bytes)(_|$)", f.name), f.name
        for label in f.labels:
            assert re.fullmatch(r"[a-z_]+", label) and not label.startswith("__")


@pytest.mark.pure
@pytest.mark.prometheus
def test_top_processes_and_one_other_series_that_adds_up():
    rows = [_facts(100 + i, f"p{i}", (10 - i) << 20, limit=64 << 20 if i == 0 else None)
            for i in range(6)]
    body = families.render(View(top=3, processes=_scan(rows))).decode()
    promtool_check_metrics(body)
    s = samples(body)
    pinned = {(lb["pid"], lb["comm"]): v for lb, v in s["rdmapin_process_pinned_bytes"]}
    assert pinned == {("100", "p0"): 10 << 20, ("101", "p1"): 9 << 20, ("102", "p2"): 8 << 20,
                      (OTHER, ""): (7 + 6 + 5) << 20}
    limits = {lb["pid"]: v for lb, v in s["rdmapin_process_memlock_limit_bytes"]}
    assert limits == {"100": 64 << 20, "101": float("inf"), "102": float("inf")}
    mrs = {lb["pid"]: v for lb, v in s["rdmapin_process_mrs"]}
    assert mrs == {"100": 1, "101": 1, "102": 1, OTHER: 3}
    blocks = [v for lb, v in s["rdmapin_process_dma_blocks"] if lb["pid"] == OTHER]
    assert blocks == [3] * len(DEVICE_PAGE_SIZES)
    assert s["rdmapin_processes_pinning"] == [({}, 6)]
    assert s["rdmapin_foll_pinned_pages"] == [({}, 42)]


@pytest.mark.pure
def test_unreadable_pages_leave_out_backing_not_the_process():
    rows = [_facts(7, "mine", 4096), _facts(8, "theirs", 8192, backing=None, blocks=None)]
    s = samples(families.render(View(top=5, processes=_scan(rows))).decode())
    assert {lb["pid"] for lb, _ in s["rdmapin_process_pinned_bytes"]} == {"7", "8"}
    assert {lb["pid"] for lb, _ in s["rdmapin_process_pinned_backing_bytes"]} == {"7"}
    assert {lb["pid"] for lb, _ in s["rdmapin_process_dma_blocks"]} == {"7"}
    assert s["rdmapin_scan_unreadable_processes"] == [({}, 1)]


@pytest.mark.pure
@pytest.mark.prometheus
def test_tracer_owners_are_bounded_and_unowned_failures_are_their_own_series():
    names = ['a"} 1\n#x', "x) S 1 (y", "\x1b[2J", "a\u202eb", "ab\udcff", "\\x1b[2J"]
    owners = [{"pid": None, "comm": None, "lkey": None, "failures": 5}]
    owners += [{"pid": 10 + i, "comm": n, "lkey": 0x200 + i, "failures": 100 - i}
               for i, n in enumerate(names)]
    owners.append({"pid": 10, "comm": names[0], "lkey": 0x200, "failures": 1})  # same series
    v = View(top=4, tracer_up=True, trace_owners=owners,
             trace_totals={"pgmigrate_fail": 9, "lost_events": 0, "not_a_counter": 1},
             trace_migrate={("compaction", "failed"): 3, ("compaction", "succeeded"): 4})
    body = families.render(v).decode()
    promtool_check_metrics(body)
    assert "\x1b" not in body and "\u202e" not in body
    s = samples(body)
    rows = {(lb["pid"], lb["comm"], lb["lkey"]): val
            for lb, val in s["rdmapin_trace_owner_folio_failures_total"]}
    want = {(UNOWNED, "", ""): 5, (OTHER, "", ""): 96 + 95}
    for i, n in enumerate(names[:4]):
        want[(str(10 + i), escape(n), hex(0x200 + i))] = 100 - i + (i == 0)
    assert rows == want
    for (pid, comm, _), _ in rows.items():
        if pid.isdigit():
            assert unescape(comm) == names[int(pid) - 10].encode("utf-8", "surrogateescape")
    assert s["rdmapin_trace_pgmigrate_fail_total"] == [({}, 9)]
    assert "rdmapin_trace_not_a_counter_total" not in s
    assert s["rdmapin_tracer_up"] == [({}, 1)]
    assert sorted((lb["reason"], lb["result"], val)
                  for lb, val in s["rdmapin_trace_migrate_pages_total"]) == [
        ("compaction", "failed", 3), ("compaction", "succeeded", 4)]


@pytest.mark.pure
@pytest.mark.prometheus
def test_rules_check_and_their_unit_tests_pass():
    for argv in (["check", "rules", RULES.name], ["test", "rules", "rdmapin.rules.test.yml"]):
        proc = subprocess.run(["promtool", *argv], cwd=RULES.parent, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout
    alerts = re.findall(r"^      - alert: (\w+)", RULES.read_text(), re.M)
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "rdmapin.rules.test.yml")
                            .read_text()))
    assert len(alerts) >= 4 and set(alerts) == tested


@pytest.mark.pure
def test_dashboard_queries_name_only_served_metrics():
    dash = json.loads(DASHBOARD.read_text())
    served = {f.name for f in FAMILIES}
    used = set()
    for panel in dash["panels"]:
        assert panel["title"] and panel["description"], panel
        for t in panel["targets"]:
            names = set(re.findall(r"\brdmapin_[a-z0-9_]+", t["expr"]))
            assert names and names <= served, (t["expr"], names - served)
            used |= names
    # the families a fleet watches are all on it
    assert {"rdmapin_process_pinned_bytes", "rdmapin_process_pinned_backing_bytes",
            "rdmapin_trace_owner_folio_failures_total", "rdmapin_zone_pageblocks_lost_to_pins",
            "rdmapin_tracer_up", "rdmapin_doctor_check_status"} <= used


@pytest.mark.pure
def test_readme_documents_every_family():
    """Each family in the README's exporter section: by name, or a tracer total by its
    counter's name in the rdmapin_trace_<counter>_total row."""
    text = README.read_text()
    start = text.index("### `rdmapin exporter`")
    section = text[start:min(text.index("\n## ", start), text.index("\n### ", start + 1))]
    counters = next(x for x in section.splitlines() if "rdmapin_trace_<counter>_total" in x)
    missing = []
    for f in FAMILIES:
        m = re.fullmatch(r"rdmapin_trace_(\w+)_total", f.name)
        if f.name not in section and not (m and f"`{m.group(1)}`" in counters):
            missing.append(f.name)
    assert not missing, f"README's exporter section lacks {missing}"


@pytest.mark.pure
def test_textfile_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    for body in (b"a 1\n", b"b 2\n" * 1000):
        path = textfile.write(tmp_path, body)
        assert path.read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rdmapin.prom"]


@pytest.mark.host_only
@pytest.mark.prometheus
def test_textfile_is_never_torn_while_a_reader_loops_on_it(tmp_path):
    """The real exporter rewrites DIR/rdmapin.prom every 50 ms while this reads it in a
    loop: every read is a whole exposition (promtool accepts a sample of them)."""
    exp = Exporter("--textfile", str(tmp_path), "--interval", "0.05", "--no-trace")
    path = tmp_path / "rdmapin.prom"
    reads, scans = [], set()
    try:
        exp.wait_for("writing", 120)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                text = path.read_text()
            except FileNotFoundError:  # before the first scan
                continue
            reads.append(text)
            got = samples(text)  # parses, or raises
            assert set(typed_names(text)) == {f.name for f in FAMILIES}, text[-300:]
            scans.add(got["rdmapin_scans_total"][0][1])
    finally:
        assert exp.stop() == 0, exp.stderr
    assert len(reads) > 20 and len(scans) > 5, (len(reads), scans)
    for text in reads[:: max(1, len(reads) // 5)]:
        promtool_check_metrics(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rdmapin.prom"]
    assert "Traceback" not in exp.stderr


@pytest.mark.host_only
def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "rdmapin", "exporter", "--no-trace",
                               "--listen", f"127.0.0.1:{port}"], cwd=TOP, capture_output=True,
                              text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"rdmapin: error: cannot listen on 127.0.0.1:{port}: "
                                  "Address already in use [EADDRINUSE] (hint: something "
                                  f"listens on 127.0.0.1:{port} already"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.host_only
def test_a_non_loopback_listen_warns_and_sigint_stops_it():
    """Bound to every address (0.0.0.0): a warning that it is exposed; SIGINT stops it with
    exit 0 and the HTTP answers meanwhile (/ and a 404 too)."""
    import urllib.error
    import urllib.request

    exp = Exporter("--listen", "0.0.0.0:0", "--no-trace", "--interval", "0.2")
    try:
        url = exp.serving(120).replace("0.0.0.0", "127.0.0.1")
        assert "exposed to every host that reaches it" in exp.stderr
        with urllib.request.urlopen(url.removesuffix("metrics"), timeout=30) as r:
            assert b"/metrics" in r.read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url.removesuffix("metrics") + "x", timeout=30)
        assert e.value.code == 404
    finally:
        exp.proc.send_signal(2)
        assert exp.proc.wait(timeout=120) == 0, exp.stderr
    assert "Traceback" not in exp.stderr


@pytest.mark.pure
def test_the_scans_pinned_pfns_are_every_process():
    rows = [ProcessFacts(1, "a", 0, 0, None, {}, None, None, np.array([5, 6], np.uint64)),
            ProcessFacts(2, "b", 0, 0, None, {}, None, None)]
    assert _scan(rows).pinned_pfns().tolist() == [5, 6]
    assert _scan([]).pinned_pfns().dtype == np.uint64


@pytest.mark.host_only
def test_threads_and_scans_stop_cleanly_in_process(tmp_path: Path):
    """The library's Exporter: a first scan, a scrape-shaped read, and stop() joins every
    thread it started (no tracer: this runs anywhere)."""
    from rdmapin.exporter.service import Exporter as Service

    before = {t.name for t in threading.enumerate()}
    svc = Service(interval=0.1, slow_interval=60, trace=False, textfile_dir=tmp_path)
    with svc:
        assert svc.wait_first_scan(120)
        s = samples(svc.exposition().decode())
        assert s["rdmapin_scans_total"][0][1] >= 1
    left = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert left <= {"rdmapin-exporter-slow"}, left  # at most a zones scan finishing
    assert (tmp_path / "rdmapin.prom").exists()
