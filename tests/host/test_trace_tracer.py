"""The tracer on this machine's real kernel: the tracepoint subset loads (kprobes are
reported unavailable in one line where the kernel has none), compaction totals equal
/proc/vmstat's deltas exactly, the full program with every probe compiles and passes the
verifier, and the CLI runs and exits without a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from needs import need_host_tracing

from rdmapin.trace import Kind, Tracer, features, loader
from rdmapin.trace.events import VMSTAT_KEYS


def _need_tracing() -> features.Features:
    need_host_tracing()
    return features.probe()


@pytest.mark.host_kernel
def test_compaction_totals_equal_vmstat_deltas():
    _need_tracing()
    with Tracer(inventory=False) as t:
        v0, t0 = t.vmstat_and_totals()
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1")
        v1, t1 = t.vmstat_and_totals()
        events = t.events()
    for k in VMSTAT_KEYS:
        assert t1[k] - t0[k] == v1[k] - v0[k], k
    assert t1["compaction_runs"] - t0["compaction_runs"] >= 1
    assert t1["lost_events"] == 0
    scans = [e for e in events if e.kind == Kind.ISOLATE_MIGRATE]
    assert sum(e.detail["scanned"] for e in scans) == (v1["compact_migrate_scanned"]
                                                       - v0["compact_migrate_scanned"])
    ends = [e for e in events if e.kind == Kind.COMPACT_END]
    assert ends and all(e.reason in t.features.compaction_status.values() for e in ends)


@pytest.mark.host_kernel
def test_every_probe_compiles_and_kprobe_programs_pass_the_verifier(monkeypatch):
    """The VM is where kprobes attach; here the whole program (all -D switches on) is at
    least compiled and verified, so a C mistake shows on the host first."""
    feat = _need_tracing()
    from bcc import BPF

    feat = feat.but(defines={d: None for _, _, d, _ in features.KPROBES} | {
        "RP_STRUCT_PAGE_SIZE": "64", "RP_PAGE_REFCOUNT_OFF": "52",
        "RP_PAGE_MAPCOUNT_OFF": "48", "RP_PG_HEAD": "6",
        "RP_FOLIO_ORDER_OFF": "64", "RP_FOLIO_ORDER_MASK": "0xff",
        "RP_FOLIO_PINCOUNT_OFF": "92", "RP_VMEMMAP_START": "0xffffea0000000000UL",
        "RP_FOLL_LONGTERM": "0x10000",
        # struct ib_mr, ib_device, rdma_restrack_entry as 6.1's BTF lays them out
        "RP_MR_RES_OFF": "88", "RP_MR_LKEY_OFF": "16", "RP_MR_RKEY_OFF": "20",
        "RP_MR_LENGTH_OFF": "32", "RP_MR_DEVICE_OFF": "0", "RP_IBDEV_NAME_OFF": "1048",
        "RP_RES_TYPE_OFF": "56", "RP_RESTRACK_MR": "4",
        # a folio's file (bpf/writeback.c) as 6.1's BTF lays it out
        "RP_PG_WRITEBACK": "15", "RP_FOLIO_MAPPING_OFF": "24", "RP_FOLIO_INDEX_OFF": "32",
        "RP_MAPPING_HOST_OFF": "0", "RP_INODE_INO_OFF": "64", "RP_INODE_SB_OFF": "40",
        "RP_SB_DEV_OFF": "16"},
        available={name: name for name in ("folio_fail", "umem", "pin_fast", "mr_keys",
                                           "writeback")})
    files = loader.select_files(feat)
    assert "pins.c" in files and "mrkeys.c" in files and "writeback.c" in files
    for k, v in feat.header_env.items():
        monkeypatch.setenv(k, v)
    b = BPF(text=loader.source(files).encode(), cflags=loader.cflags(feat, feat.ringbuf))
    try:
        for _, _, _, fns in features.KPROBES:
            for fn, _ret in fns:
                b.load_func(fn.encode(), BPF.KPROBE)
    finally:
        b.cleanup()


@pytest.mark.host_kernel
def test_cli_runs_the_subset_and_says_what_is_missing_in_one_line():
    feat = _need_tracing()
    proc = subprocess.run([sys.executable, "-m", "rdmapin", "trace", "-j", "-d", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    missing = [line for line in proc.stderr.splitlines() if "unavailable:" in line]
    assert len(missing) == (1 if feat.missing else 0)
    assert "Hit Ctrl-C to end." in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[-1]["summary"] == "summary"
    assert set(VMSTAT_KEYS) <= set(lines[-1]["totals"])
    assert lines[-1]["totals"]["lost_events"] == 0


def test_cli_without_privileges_says_why_in_one_line():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to drop to nobody with setpriv")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-m", "rdmapin", "trace", "-d", "1"],
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("rdmapin: error: ") and "root" in line


@pytest.mark.host_kernel
def test_prometheus_exports_the_same_totals():
    _need_tracing()
    pytest.importorskip("prometheus_client")
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rdmapin", "trace", "-j", "-d", "30",
                             "--prometheus", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.3)
        names = {line.split()[0] for line in body.splitlines()
                 if line.startswith("rdmapin_trace_")}
        assert {f"rdmapin_trace_{k}_total" for k in VMSTAT_KEYS} <= names
        assert "rdmapin_trace_lost_events_total" in names
    finally:
        proc.send_signal(2)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err
    assert json.loads(out.splitlines()[-1])["summary"] == "summary"


@pytest.mark.host_kernel
def test_pause_detaches_and_resume_reattaches_without_recompiling():
    _need_tracing()

    def compact() -> None:
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1")

    with Tracer(inventory=False) as t:
        prog = t.program
        t.pause()
        before = t.totals()
        compact()
        assert t.totals() == before  # nothing counted while detached
        t.resume()
        assert t.program is prog
        v0, t0 = t.vmstat_and_totals()
        compact()
        v1, t1 = t.vmstat_and_totals()
    for k in VMSTAT_KEYS:
        assert t1[k] - t0[k] == v1[k] - v0[k], k
    assert t1["compaction_runs"] > t0["compaction_runs"]


@pytest.mark.host_kernel
def test_interval_summaries_are_deltas_that_add_up_to_the_final_totals():
    """`-s 1`: one JSON summary a second holding that second's counts; compaction forced in
    the middle shows up in an interval, and every counter's intervals sum to no more than the
    final totals (the run's tail after the last interval is only in the final one)."""
    _need_tracing()
    import time

    proc = subprocess.Popen([sys.executable, "-m", "rdmapin", "trace", "-j", "-s", "1",
                             "-d", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = ""
        while "Hit Ctrl-C to end." not in ready:
            line = proc.stderr.readline()
            assert line, "the tracer exited before it was ready"
            ready += line
        time.sleep(1.2)
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    lines = [json.loads(x) for x in out.splitlines()]  # every line whole JSON
    *intervals, final = [x for x in lines if "summary" in x]
    assert final["summary"] == "summary"
    assert len(intervals) >= 3, [x["summary"] for x in intervals]
    for k in (*VMSTAT_KEYS, "compaction_runs"):
        parts = [x["totals"][k] for x in intervals]
        assert all(p >= 0 for p in parts), (k, parts)
        assert sum(parts) <= final["totals"][k], (k, parts, final["totals"][k])
    assert sum(x["totals"]["compaction_runs"] for x in intervals) >= 1
