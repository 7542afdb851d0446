"""Shared pieces of the tracer's VM tests: buffers on a chosen node, the vmstat agreement
check, the `rdmapin trace` CLI started and ready, and the environment guard for tests that
need special guest boot options."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rdmapin import mm
from rdmapin.kernel import pagemap
from rdmapin.trace.events import VMSTAT_KEYS

PAGE = mm.PAGE_SIZE
MEMORY = Path("/sys/devices/system/memory")
STRICT = os.environ.get("RDMAPIN_STRICT") == "1"
_libc = ctypes.CDLL(None, use_errno=True)


def start_cli_tracer(*args: str) -> subprocess.Popen:
    """`python -m rdmapin trace ARGS` with piped text output, returned once it says it is
    attached ("Hit Ctrl-C to end."); fails with its stderr if it dies or never gets there."""
    proc = subprocess.Popen([sys.executable, "-m", "rdmapin", "trace", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 900  # compiling in a TCG guest takes minutes
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if "Hit Ctrl-C to end." in line or not line:
            break
    if "Hit Ctrl-C to end." not in seen[-1]:
        proc.kill()
        proc.wait()
    assert "Hit Ctrl-C to end." in seen[-1], "".join(seen)
    return proc


def require(missing: str | None, boot: str) -> None:
    """Fail (strict, in the VM) or skip when the guest lacks what this file needs."""
    if missing is None:
        return
    msg = f"needs a guest booted with `ci/vm/run {boot}`: {missing}"
    if STRICT:
        pytest.fail(msg + " (RDMAPIN_STRICT=1: failing, not skipping)", pytrace=False)
    pytest.skip(msg)


HEADROOM = 64 << 20  # left on the node for the test's own process (bcc's compiler)


def _node_available(node: int) -> int:
    """Free plus page cache that is not shmem (reclaimable, no swap here), in bytes."""
    fields = {}
    with open(f"/sys/devices/system/node/node{node}/meminfo") as f:
        for line in f:
            parts = line.split()  # "Node 0 MemFree:  123456 kB"
            fields[parts[2].rstrip(":")] = int(parts[3]) * 1024
    return fields["MemFree"] + fields["FilePages"] - fields["Shmem"]


def buffer_on_node(npages: int, node: int) -> tuple[mmap.mmap, np.ndarray]:
    """Anonymous memory bound to ``node`` with every page faulted in.

    Refuses (a failed test) when the node cannot hold it: faulting a node-bound buffer past
    the node's memory OOM-kills the whole pytest process, every later test with it."""
    avail = _node_available(node)
    if avail < npages * PAGE + HEADROOM:
        pytest.fail(f"node {node} has {avail >> 20} MiB free or reclaimable; this test binds "
                    f"{npages * PAGE >> 20} MiB there and leaves {HEADROOM >> 20} MiB "
                    "(something earlier holds memory?)", pytrace=False)
    buf = mmap.mmap(-1, npages * PAGE)
    arr = np.frombuffer(buf, dtype=np.uint8)
    mm.mbind(arr.ctypes.data, len(arr), node)
    arr[::PAGE] = 1
    return buf, arr


def mlock(arr: np.ndarray) -> None:
    if _libc.mlock(ctypes.c_void_p(arr.ctypes.data), ctypes.c_size_t(len(arr))) != 0:
        raise OSError(ctypes.get_errno(), "mlock")


def pfns_of(arr: np.ndarray, pid: int | str = "self") -> np.ndarray:
    return pagemap.pfns(pagemap.read(pid, arr.ctypes.data, len(arr)))


def assert_totals_match(v0: dict, v1: dict, t0: dict, t1: dict) -> dict[str, int]:
    """Every vmstat-named tracer total moved exactly as /proc/vmstat did."""
    deltas = {}
    for k in VMSTAT_KEYS:
        if k not in v0:
            continue
        vm, tr = v1[k] - v0[k], t1[k] - t0[k]
        assert tr == vm, f"{k}: tracer {tr} != /proc/vmstat {vm}"
        deltas[k] = vm
    assert t1["lost_events"] == 0, f"{t1['lost_events']} events lost"
    return deltas


def dimm_block_missing() -> str | None:
    """Why node 1 has no hot-plugged (removable) memory block to offline, or None."""
    node1 = Path("/sys/devices/system/node/node1")
    if not node1.exists():
        return "no NUMA node 1"
    blocks = list(node1.glob("memory[0-9]*"))
    if not blocks:
        return "node 1 has no memory blocks"
    if not any((p / "removable").exists() and (p / "removable").read_text().strip() == "1"
               for p in blocks):
        return "node 1 has no removable (hot-plugged) memory block"
    return None


def offline_block(block: int, timeout: float) -> tuple[int | None, str, str]:
    """Try to offline memory ``block``; the kernel retries a pinned block until a signal
    arrives, so the attempt runs in a child interrupted after ``timeout`` s.
    (exit status or None when interrupted, state after, what the shell said)."""
    state = MEMORY / f"memory{block}" / "state"
    child = subprocess.Popen(["sh", "-c", f"echo offline > {state}"],
                             stderr=subprocess.PIPE, text=True)
    try:
        child.wait(timeout=timeout)
        rc = child.returncode
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        rc = None
    err = child.stderr.read().strip()
    return rc, state.read_text().strip(), err
