"""`rdmapin doctor` reports what the kernel files say, in a stable shape, and never
tracebacks; the exit status follows the worst verdict."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from needs import need_host_tracing

from rdmapin import doctor
from rdmapin.cli import doctor as cli_doctor
from rdmapin.doctor import limits, memory
from rdmapin.kernel import mmzone

KEYS = {"check", "status", "value", "fix", "data"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdmapin", "doctor", *args],
                          capture_output=True, text=True, check=False)


def test_json_lines_have_stable_keys_and_exit_follows_worst():
    proc = _cli("-j")
    assert proc.stderr == ""
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) >= 15
    for r in rows:
        assert set(r) == KEYS
        assert r["status"] in ("PASS", "WARN", "FAIL")
        assert (r["fix"] is None) == (r["status"] == "PASS")
    any_fail = any(r["status"] == "FAIL" for r in rows)
    assert proc.returncode == (1 if any_fail else 0)
    names = {r["check"] for r in rows}
    assert {"rdma", "memlock", "cap pin", "cap trace", "cap pfn", "fork", "maps", "thp",
            "compaction", "zones", "btf", "kprobes", "bcc", "headers"} <= names


def test_text_is_aligned_and_under_80_columns():
    proc = _cli()
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    statuses = [ln for ln in lines if ln[:4] in ("PASS", "WARN", "FAIL")]
    assert statuses and all(ln[4:6] == "  " for ln in statuses)
    # Values start in one column, after the padded name.
    col = 6 + cli_doctor.NAME_W + 1
    assert all(ln[col - 1] == " " and ln[col] != " " for ln in statuses)
    assert all(len(ln) < 80 for ln in lines if "/" not in ln.split()[-1])
    assert lines[-1].endswith("PASS")


@pytest.mark.skipif(Path("/sys/class/infiniband").is_dir(), reason="host has RDMA devices")
def test_no_rdma_device_fails_with_the_fix():
    [c] = [c for c in doctor.run_checks(["rdma"])]
    assert c.status is doctor.Status.FAIL
    assert "rdma link add rxe0 type rxe netdev" in c.fix and "ci/vm/run" in c.fix


def test_memlock_matches_rlimit_and_capeff():
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    capeff = next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                  if ln.startswith("CapEff:"))
    ipc_lock = bool(int(capeff.split()[1], 16) >> 14 & 1)
    [c] = list(limits.memlock())
    assert c.data["cap_ipc_lock"] is ipc_lock
    assert c.data["soft"] == (None if soft == resource.RLIM_INFINITY else soft)
    assert c.data["hard"] == (None if hard == resource.RLIM_INFINITY else hard)
    unlimited = ipc_lock or soft == resource.RLIM_INFINITY
    assert (c.status is doctor.Status.PASS) == unlimited
    if not unlimited:
        assert c.data["can_pin"] == max(soft - c.data["vm_pin"], 0)


def test_capability_lines_follow_capeff_bits():
    mask = limits.effective_caps()
    by_name = {c.name: c for c in limits.capabilities()}
    assert by_name["cap pin"].data["have"] == bool(mask >> 14 & 1)
    assert by_name["cap pfn"].data["have"] == bool(mask >> 21 & 1)
    trace = bool(mask >> 38 & 1 and mask >> 39 & 1) or bool(mask >> 21 & 1)
    assert by_name["cap trace"].data["have"] == trace
    for c in by_name.values():
        if c.status is not doctor.Status.PASS:
            assert "AmbientCapabilities=" in c.fix and "--ambient-caps=" in c.fix


def test_grant_fix_names_setpriv_and_systemd():
    fix = limits.grant_fix("bpf", "perfmon")
    assert "AmbientCapabilities=CAP_BPF CAP_PERFMON" in fix
    assert "setpriv --inh-caps=+bpf,+perfmon --ambient-caps=+bpf,+perfmon" in fix


def test_hugetlb_counts_equal_sysfs():
    for c in memory.hugetlb():
        d = Path(f"/sys/kernel/mm/hugepages/hugepages-{c.data['size_kb']}kB")
        assert c.data["total"] == int((d / "nr_hugepages").read_text())
        assert c.data["free"] == int((d / "free_hugepages").read_text())
        assert c.data["reserved"] == int((d / "resv_hugepages").read_text())
        for node, v in c.data["nodes"].items():
            nd = Path(f"/sys/devices/system/node/node{node}/hugepages") / d.name
            assert v["total"] == int((nd / "nr_hugepages").read_text())


def test_thp_reports_the_selected_modes():
    [c] = list(memory.thp())
    for key in ("enabled", "defrag"):
        text = Path(f"/sys/kernel/mm/transparent_hugepage/{key}").read_text()
        assert f"[{c.data[key]}]" in text


def test_fragmentation_matches_buddyinfo():
    """Free blocks of order >= 9 per zone equal what /proc/buddyinfo says, read around."""
    for _ in range(20):
        before = Path("/proc/buddyinfo").read_text()
        checks = list(memory.fragmentation(order=9))
        after = Path("/proc/buddyinfo").read_text()
        if before == after:
            break
    else:
        pytest.fail("/proc/buddyinfo changed under every one of 20 reads")
    expect = {}
    for line in before.splitlines():
        p = line.replace(",", "").split()
        counts = [int(x) for x in p[4:]]
        free = sum(n << k for k, n in enumerate(counts))
        blocks = sum(n << (k - 9) for k, n in enumerate(counts) if k >= 9)
        expect[(int(p[1]), p[3])] = (free, blocks)
    got = {(c.data["node"], c.data["zone"]): (c.data["free_pages"], c.data["free_blocks"])
           for c in checks}
    assert got == expect


def test_unusable_index_is_the_kernels_formula():
    fa = mmzone.FreeArea(0, "Normal", (8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0))
    # 8 + 512 free pages, 512 of them in a block able to serve order 9.
    assert fa.unusable_index(9) == pytest.approx(8 / 520)
    assert fa.unusable_index(0) == 0.0
    assert mmzone.FreeArea(0, "DMA", (0,) * 11).unusable_index(9) == 1.0


def test_movable_zones_agree_with_zoneinfo_and_meminfo():
    [c] = list(memory.movable_zones())
    cma = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text()
               .splitlines() if ln.startswith("CmaTotal:")) if "CmaTotal:" in \
        Path("/proc/meminfo").read_text() else 0
    assert c.data["cma"] == cma
    movable = [z for z in mmzone.zoneinfo() if z.name == "Movable" and z.present]
    assert (c.status is doctor.Status.PASS) == (not movable and not cma)


def test_map_count_is_this_process():
    [c] = list(limits.map_count())
    assert c.data["max_map_count"] == int(Path("/proc/sys/vm/max_map_count").read_text())
    assert c.data["maps"] > 0


def test_tracing_checks_agree_with_tracefs_and_the_tracer():
    from rdmapin.kernel import tracefs
    from rdmapin.trace import features

    need_host_tracing()
    by_name = {c.name: c for c in doctor.run_checks(["tracing"])}
    tfs = tracefs.tracefs()
    tp = by_name["tracepoints"]
    assert tp.data["wanted"] == sorted(t for _, t, _, _ in features.TRACEPOINTS)
    for name, cat_ev, _, _ in features.TRACEPOINTS:
        cat, ev = cat_ev.split(":")
        if not (tfs / "events" / cat / ev).is_dir():
            assert name in tp.data["missing"]
    assert by_name["kprobes"].data["kprobes"] == (tfs / "kprobe_events").exists()
    headers = Path(f"/lib/modules/{os.uname().release}/build/include/generated/autoconf.h")
    assert (by_name["headers"].status is doctor.Status.PASS) == (
        headers.exists() or Path("/sys/kernel/kheaders.tar.xz").exists())


def test_fork_check_uses_the_kernels_answer():
    [c] = list(limits.fork())
    from rdmapin.device import fork_status

    assert c.data["ibv_fork_status"] == fork_status()
    unneeded = c.data["kernel_copy_on_fork"] or fork_status() == "unneeded"
    assert (c.status is doctor.Status.PASS) == bool(unneeded)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_unprivileged_user_gets_verdicts_not_tracebacks():
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "--inh-caps=-all", sys.executable, "-m", "rdmapin", "doctor", "-j"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.stderr == ""
    rows = {r["check"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert rows["cap pin"]["status"] == "WARN" and rows["cap pfn"]["status"] == "WARN"
    assert rows["memlock"]["data"]["cap_ipc_lock"] is False
    if os.path.ismount("/sys/kernel/tracing"):
        assert "not readable" in rows["tracefs"]["value"]
