"""The fleet view across two hosts: `rdmapin exporter` runs in both guests, listening on its
pair0 address; one Prometheus, in guest a, scrapes both over the link. Each host registers
an MR of its own size on rxe2, and once Prometheus holds a scan of each exporter newer than
that, its HTTP API gives each host's pinned bytes per process equal to that host's /proc
(VmPin of every process pinning there, read by the host itself and sent over the control
channel) and the host's FOLL_PIN count.
"""

from __future__ import annotations

import time

import pytest
from pair_util import DEVICE, PEER, ROLE, SELF
from promserver import Exporter, Prometheus

import rdmapin
from rdmapin.kernel import procfs

pytest_plugins = ("verbs_fixtures", "pair_fixtures")
pytestmark = [pytest.mark.pair, pytest.mark.rdma, pytest.mark.prometheus]

EXPORTER_PORT = 9464
MIB = 1 << 20
MR_BYTES = {"a": 6 * MIB, "b": 10 * MIB}


def pinning() -> dict[str, int]:
    """{pid: VmPin} of every process pinning memory on this host now, from /proc."""
    out = {}
    for pid in procfs.pids():
        try:
            pinned = procfs.vm_pin(pid)
        except (OSError, KeyError):  # gone, or a kernel thread (no VmPin line)
            continue
        if pinned:
            out[str(pid)] = pinned
    return out


def test_one_prometheus_scrapes_both_hosts(peer, pins, tmp_path):
    exporter = Exporter("--listen", f"{SELF}:{EXPORTER_PORT}", "--no-trace", "--interval", "1",
                        "--slow-interval", "600")
    prom = None
    try:
        if ROLE == "a":  # starts while the exporters import (tens of seconds each under TCG)
            prom = Prometheus(tmp_path, [f"{SELF}:{EXPORTER_PORT}", f"{PEER}:{EXPORTER_PORT}"])
        exporter.serving()
        with rdmapin.open_device(DEVICE) as dev, dev.alloc_pd() as pd:
            buf = rdmapin.empty(MR_BYTES[ROLE], "uint8")
            with pd.register(buf):
                here = {"since": time.time(), "pinning": pinning(),
                        "foll_pins": procfs.foll_pins()}
                assert here["pinning"]  # this process, at least
                there = peer.exchange("pinning", here, timeout=300)
                if prom is not None:
                    for host, facts in ((SELF, here), (PEER, there)):
                        _agrees(prom, f"{host}:{EXPORTER_PORT}", facts)
                peer.exchange("checked", timeout=600)
    finally:
        if prom is not None:
            prom.stop()
        rc = exporter.stop()
    assert rc == 0, exporter.stderr
    assert "Traceback" not in exporter.stderr, exporter.stderr


def _agrees(prom: Prometheus, instance: str, facts: dict) -> None:
    """Prometheus' view of one host equals what that host read from its /proc."""
    sel = f'instance="{instance}"'
    prom.wait(f'rdmapin_scan_timestamp_seconds{{{sel},scan="processes"}} > {facts["since"]}',
              timeout=300)
    got = {labels["pid"]: value
           for labels, value in prom.query(f"rdmapin_process_pinned_bytes{{{sel}}}")
           if value or labels["pid"] not in ("other", "unowned")}
    assert got == facts["pinning"], (instance, got, facts["pinning"])
    assert prom.value(f"rdmapin_foll_pinned_pages{{{sel}}}") == facts["foll_pins"]
