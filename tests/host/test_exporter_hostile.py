"""Hostile input for `rdmapin exporter` (issue 14, extending issue 12's suites): real pinning
processes with forged names (a Prometheus label break, quotes, backslashes, a terminal escape,
a bidi override, a byte that is not UTF-8, line breaks) are each one series whose comm label is
the escaped name and gives the bytes back; processes that exit while scanned, a pid reused
by a new process mid-scan, and a flood of short-lived pinners never put a traceback in a
scrape or stop the scans; run as an unprivileged user it counts what it cannot read.

Real processes, real /proc: the same bytes on every kernel, and dozens of Python processes
(minutes under TCG), so the host runs it (host_only), like the forged-names suite."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import forged
import pytest
from forged import NAMES, check_name, check_text
from promserver import TOP, Exporter, promtool_check_metrics, samples

from rdmapin.exporter import scan
from rdmapin.kernel import procfs
from rdmapin.kernel.printable import escape

pytestmark = pytest.mark.host_only


@pytest.fixture(scope="module")
def children():
    with forged.children() as kids:
        yield kids


def _scrape_after(exp: Exporter, t: float) -> str:
    """A scrape whose process scan ended after ``t``."""
    end = time.monotonic() + 120
    while True:
        body = exp.scrape()
        got = samples(body).get("rdmapin_scan_timestamp_seconds", [])
        if any(lb["scan"] == "processes" and v > t for lb, v in got):
            return body
        assert time.monotonic() < end and exp.proc.poll() is None, exp.stderr
        time.sleep(0.1)


@pytest.mark.prometheus
def test_forged_names_are_one_escaped_series_each(children):
    exp = Exporter("--no-trace", "--interval", "0.2", "--top", "100")
    try:
        exp.serving(120)
        body = _scrape_after(exp, time.time())
    finally:
        assert exp.stop() == 0, exp.stderr
    check_text(body)  # no raw control, bidi or line-break character anywhere
    promtool_check_metrics(body)
    rows = samples(body)["rdmapin_process_pinned_bytes"]
    by_pid = {}
    for labels, value in rows:
        assert labels["pid"] not in by_pid, f"two series for pid {labels['pid']}"
        by_pid[labels["pid"]] = (labels, value)
    for kid in children.values():
        labels, value = by_pid[str(kid.pid)]
        check_name(labels["comm"], kid)
        assert value == procfs.vm_pin(kid.pid) == kid.length
    assert "Traceback" not in exp.stderr


def test_the_rest_of_the_processes_add_up_in_other(children):
    """--top 2: the two most pinned keep their series, every other pinner is in pid="other",
    whose pinned bytes are exactly the sum of their VmPin."""
    result = scan.scan_processes()
    pinners = {p.pid: p.pinned for p in result.processes}
    assert {k.pid for k in children.values()} <= set(pinners)
    from rdmapin.exporter import families

    body = families.render(families.View(top=2, processes=result)).decode()
    rows = {lb["pid"]: v for lb, v in samples(body)["rdmapin_process_pinned_bytes"]}
    assert len(rows) == 3 and rows.pop("other") == sum(sorted(pinners.values())[:-2])
    assert sorted(rows.values()) == sorted(pinners.values())[-2:]


def _pinner(name: bytes = b"pinner") -> forged.Child:
    proc = subprocess.Popen([sys.executable, "-c", forged.CHILD, str(forged.TESTS), name.hex()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    word, *rest = proc.stdout.readline().decode().split()
    if word != "ready":
        proc.kill()
        pytest.skip(f"io_uring unavailable here: {' '.join(rest)}")
    return forged.Child(name, proc, int(rest[0]), int(rest[1]))


def _end(kid: forged.Child) -> None:
    kid.proc.kill()
    kid.proc.wait(timeout=30)


def test_a_process_exiting_mid_scan_is_counted_not_raised(monkeypatch):
    """The pinner exits after its status was read, while its limits are being read: the
    scan leaves it out and counts it as vanished."""
    if os.geteuid() != 0:
        pytest.skip("pin counts need root")
    kid = _pinner()
    real = procfs.memlock_limit

    def exit_first(pid):
        if pid == kid.pid:
            _end(kid)
        return real(pid)

    try:
        monkeypatch.setattr(procfs, "memlock_limit", exit_first)
        result = scan.scan_processes([kid.pid])
    finally:
        _end(kid)
    assert result.vanished == 1 and result.processes == ()


def test_a_pid_reused_mid_scan_is_not_taken_for_the_old_process(monkeypatch):
    """The pinner exits mid-scan and a new process gets its pid (ns_last_pid): its start
    time differs, so the scan does not report the new process under the old one's reads."""
    if os.geteuid() != 0:
        pytest.skip("ns_last_pid needs root")
    old = _pinner(b"old")
    real = procfs.memlock_limit
    new: list[forged.Child] = []

    def reuse(pid):
        if pid == old.pid and not new:
            _end(old)
            for _ in range(20):  # another process may take the pid first: try again
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(old.pid - 1))
                kid = _pinner(b"new")
                if kid.pid == old.pid:
                    new.append(kid)
                    break
                _end(kid)
        return real(pid)

    try:
        monkeypatch.setattr(procfs, "memlock_limit", reuse)
        result = scan.scan_processes([old.pid])
        if not new:
            pytest.skip("could not get the pid reused (a busy machine took it each time)")
        assert result.vanished == 1 and result.processes == ()
        monkeypatch.undo()  # a scan now sees the new process, whole
        (row,) = scan.scan_processes([old.pid]).processes
        assert row.comm == "new" and row.pinned == new[0].length
    finally:
        _end(old)
        for kid in new:
            _end(kid)


CHURN = r"""
import subprocess, sys, time
end = time.monotonic() + float(sys.argv[3])
kids = []
while time.monotonic() < end:
    kids.append(subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], "636875726e"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    while len(kids) > 4:
        k = kids.pop(0)
        k.stdout.readline()
        k.kill()
        k.wait()
for k in kids:
    k.kill()
    k.wait()
"""


@pytest.mark.prometheus
def test_pid_churn_never_breaks_a_scrape():
    """Pinning processes start and get killed for 4 s while the exporter scans every 50 ms
    and this scrapes in a loop: every scrape parses, no scan fails, no traceback."""
    exp = Exporter("--no-trace", "--interval", "0.05", "--top", "3")
    churn = None
    try:
        exp.serving(120)
        churn = subprocess.Popen([sys.executable, "-c", CHURN, forged.CHILD, str(forged.TESTS),
                                  "4"])
        bodies = []
        while churn.poll() is None:
            bodies.append(exp.scrape())
        last = _scrape_after(exp, time.time())
    finally:
        if churn is not None and churn.poll() is None:
            churn.kill()
        rc = exp.stop()
    assert rc == 0 and churn.returncode == 0, exp.stderr
    scans = set()
    for body in bodies:
        s = samples(body)
        assert len(s.get("rdmapin_process_pinned_bytes", [])) <= 4  # --top 3 and "other"
        scans.add(s["rdmapin_scans_total"][0][1])
    assert len(scans) >= 5, f"{len(scans)} scans while the pinners churned"
    promtool_check_metrics(last)
    s = samples(last)
    assert s["rdmapin_scan_errors_total"] == [({"scan": k}, 0) for k in
                                              ("processes", "zones", "doctor")]
    assert "Traceback" not in exp.stderr and "failed" not in exp.stderr


def test_an_unprivileged_exporter_counts_what_it_cannot_read(children):
    """--no-trace as nobody over root's pinning processes: their pinned bytes (status is
    world-readable) serve, their pages are counted unreadable, the zones scan (kpageflags is
    root's) is a counted error, and SIGTERM still stops it with exit 0."""
    env = {"PYTHONPATH": str(TOP)}
    exp = Exporter("--no-trace", "--interval", "0.2", "--slow-interval", "0.5", "--top", "50",
                   user=["env", *(f"{k}={v}" for k, v in env.items()), "setpriv",
                         "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
    try:
        exp.serving(120)
        end = time.monotonic() + 120
        while True:
            s = samples(_scrape_after(exp, time.time()))
            errors = {lb["scan"]: v for lb, v in s["rdmapin_scan_errors_total"]}
            if errors["zones"] >= 1:
                break
            assert time.monotonic() < end, exp.stderr
            time.sleep(0.2)
    finally:
        assert exp.stop() == 0, exp.stderr
    assert errors["processes"] == 0
    pinned = {lb["pid"]: v for lb, v in s["rdmapin_process_pinned_bytes"]}
    for kid in children.values():
        assert pinned[str(kid.pid)] == kid.length
    assert s["rdmapin_scan_unreadable_processes"][0][1] >= len(children)
    assert not s.get("rdmapin_process_pinned_backing_bytes")
    assert "Traceback" not in exp.stderr
    assert "zones scan failed" in exp.stderr


def test_comm_labels_round_trip_through_the_scan(children):
    """The scan keeps each comm as the process set it; the exposition escapes it."""
    result = scan.scan_processes([k.pid for k in children.values()])
    comms = {p.pid: p.comm for p in result.processes}
    for kid in children.values():
        assert comms[kid.pid] == kid.name
        assert escape(comms[kid.pid]).isprintable()
    assert set(NAMES) <= set(children)
