"""In the soft-RoCE guest every doctor check passes or warns with reason: both rxe devices
active over their veths, copy-on-fork reported, kprobes and headers present, hugetlb pages
as reserved at boot; and a memlock limit without CAP_IPC_LOCK is reported as the room left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm]


def _doctor(*prefix: str, only: tuple[str, ...] = ()) -> tuple[int, dict[str, list[dict]]]:
    checks = [a for g in only for a in ("-c", g)]
    proc = subprocess.run([*prefix, sys.executable, "-m", "rdmapin", "doctor", "-j", *checks],
                          capture_output=True, text=True, check=False)
    assert proc.stderr == ""
    rows: dict[str, list[dict]] = {}
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        rows.setdefault(r["check"], []).append(r)
    return proc.returncode, rows


@pytest.fixture(scope="module")
def guest():
    """One doctor run shared by the checks below (each run costs a minute under TCG)."""
    return _doctor()


def test_guest_has_no_failures_and_both_rxe_ports_active(guest):
    rc, rows = guest
    fails = [r for rs in rows.values() for r in rs if r["status"] == "FAIL"]
    assert fails == [] and rc == 0
    rdma = {r["data"]["device"]: r for r in rows["rdma"]}
    assert {"rxe0", "rxe1"} <= set(rdma)
    for dev, netdev in (("rxe0", "v0"), ("rxe1", "v1")):
        r = rdma[dev]
        assert r["status"] == "PASS" and r["data"]["kind"] == "rxe"
        assert r["data"]["ports"][0]["state"] == "ACTIVE"
        assert r["data"]["ports"][0]["netdev"] == netdev
        assert r["data"]["uverbs_rw"] is True


def test_fork_is_the_kernels_copy_on_fork(guest):
    out = subprocess.run(["rdma", "system", "show"], capture_output=True, text=True,
                         check=True).stdout
    _, rows = guest
    [fork] = rows["fork"]
    on = "copy-on-fork on" in out
    assert fork["data"]["kernel_copy_on_fork"] is on
    assert (fork["status"] == "PASS") == on


def test_tracing_ready_in_the_guest(guest):
    _, rows = guest
    for name in ("btf", "kprobes", "tracepoints", "bcc", "headers"):
        [r] = rows[name]
        assert r["status"] == "PASS", r


def test_hugetlb_matches_boot_reservation(guest):
    _, rows = guest
    [h2m] = rows["hugetlb 2M"]
    sysfs = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
    assert h2m["data"]["total"] == int((sysfs / "nr_hugepages").read_text()) > 0
    assert h2m["data"]["free"] == int((sysfs / "free_hugepages").read_text())
    assert sum(n["total"] for n in h2m["data"]["nodes"].values()) == h2m["data"]["total"]
    assert h2m["status"] == "PASS"


def test_memlock_limit_without_ipc_lock_is_the_room_left():
    limit = 1 << 20
    _, rows = _doctor("prlimit", f"--memlock={limit}", "setpriv",
                       "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock",
                       only=("memlock", "caps"))
    [m] = rows["memlock"]
    assert m["data"]["cap_ipc_lock"] is False
    assert m["data"]["soft"] == limit
    assert m["status"] == "WARN" and m["data"]["can_pin"] == limit - m["data"]["vm_pin"]
    assert "LimitMEMLOCK=infinity" in m["fix"] and "AmbientCapabilities=" in m["fix"]
    [cap] = rows["cap pin"]
    assert cap["status"] == "WARN"
