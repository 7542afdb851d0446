"""`rdmapin bench` in the guest: every contender measured in every round, bulk rows naming
the backing the kernel gave, the plot written. Structure only: timings are the benchmark's
business (benchmarks/reg_cost.py), never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ROWS = {"C floor", "C, own process", "shim via cffi", "rdmapin numpy", "rdmapin bytearray",
        "rdmapin (addr,len)", "pyverbs"}


@pytest.mark.rdma
def test_bench_json_has_every_contender_and_the_backing_obtained(tmp_path):
    png = tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, "-m", "rdmapin", "bench", "--iters", "20", "--rounds", "2",
         "--sizes", "4", "--pages", "4k,2m", "-j", "--plot", str(png)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    per_op = {r["name"]: r for r in rows if r["kind"] == "per_op"}
    assert set(per_op) == ROWS
    for r in per_op.values():
        assert len(r["rounds"]) == 2 and all(t > 0 for t in r["rounds"])
        assert r["paired_x_c"] > 0
    assert per_op["C floor"]["paired_x_c"] == 1.0
    bulk = {r["pages"]: r for r in rows if r["kind"] == "bulk"}
    assert bulk["4k"]["backing"] == "4k" and bulk["4k"]["reg_us"] > 0
    assert bulk["2m"]["backing"] == "2m"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
