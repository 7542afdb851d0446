"""`rdmapin trace -j` in another process sees this process's pinned pages refuse to migrate
and names the MR (lkey) and this pid; Ctrl-C detaches and prints the summary."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from trace_util import buffer_on_node, pfns_of, start_cli_tracer

import rdmapin
from rdmapin import mm
from rdmapin.kernel import procfs

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm]
NPAGES = 16


def test_cli_json_lines_name_the_mr_and_pid_and_sigint_prints_the_summary():
    proc = start_cli_tracer("-j", "-p", str(os.getpid()))
    try:
        with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
            buf, arr = buffer_on_node(NPAGES, 0)
            with pd.register(arr) as mr:
                pinned = set(pfns_of(arr).tolist())
                v0 = procfs.vmstat()
                mm.move_pages(mm.page_addrs(arr.ctypes.data, len(arr)), 1)
                v1 = procfs.vmstat()
                time.sleep(1.0)  # let the tracer's thread drain and print
                lkey = mr.lkey
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=120)
            del arr
            buf.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    lines = [json.loads(x) for x in out.splitlines()]
    fails = [x for x in lines if x.get("event") == "folio_fail"]
    assert {x["pfn"] for x in fails} == pinned
    unowned = [x for x in fails if not x["owners"]]
    umem = [x for x in lines if str(x.get("event", "")).startswith("umem")]
    assert not unowned, f"{len(unowned)} failures without an owner: {unowned[:3]}; umem: {umem}"
    assert {(x["owners"][0]["pid"], x["owners"][0]["lkey"]) for x in fails} == {
        (os.getpid(), lkey)}
    summary = lines[-1]
    assert summary["summary"] == "summary"
    (row,) = summary["failures_by_owner"]
    assert (row["pid"], row["lkey"], row["pfns"]) == (os.getpid(), lkey, NPAGES)
    assert summary["totals"]["pgmigrate_fail"] >= v1["pgmigrate_fail"] - v0["pgmigrate_fail"]
    assert summary["totals"]["lost_events"] == 0
