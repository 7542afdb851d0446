#!/usr/bin/env python3
"""Full page report vs a bare C read of the same pagemap + kpageflags entries.

    python benchmarks/pages_report.py                 # 1, 4, 8 GiB of 4K anon (as root)
    python benchmarks/pages_report.py --sizes 1,4 --backing thp --rounds 5

For each populated region: the C floor (csrc/pagemap_floor.c, compiled now, reading this
process's pagemap from outside), rdmapin's raw reads (pagemap.read + kpageflags.read) and
the full ``rdmapin.pages.inspect`` report, best of ROUNDS, interleaved in one run. Memory:
tracemalloc's peak during one report, per base page. Needs root (PFNs, kpageflags).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

import rdmapin.pages as pages
from rdmapin.kernel import kpageflags, pagemap

TOP = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
MADV = {"4k": 15, "thp": 14}  # MADV_NOHUGEPAGE, MADV_HUGEPAGE


def build_floor(workdir: Path) -> Path:
    exe = workdir / "pagemap_floor"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(TOP / "csrc" / "pagemap_floor.c")],
                   check=True)
    return exe


def populated(nbytes: int, backing: str) -> tuple[mmap.mmap, int]:
    align = 2 << 20
    m = mmap.mmap(-1, nbytes + align, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    addr = base + (-base) % align
    libc = ctypes.CDLL("libc.so.6")
    libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(nbytes), MADV[backing])
    view = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(addr))
    view[::PAGE] = 1
    del view
    return m, addr


def timed_ms(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t) * 1e3


def raw_read(addr: int, nbytes: int) -> None:
    kpageflags.read(pagemap.pfns(pagemap.read("self", addr, nbytes)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,4,8", help="GiB, comma-separated")
    p.add_argument("--backing", default="4k", choices=sorted(MADV))
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("rdmapin: error: needs root: PFNs and /proc/kpageflags (hint: sudo)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        floor = build_floor(Path(tmp))
        head = (f"{'SIZE':>6} {'BACKING':>7} {'PAGES':>8} {'RUNS':>7} {'C-FLOOR':>9} "
                f"{'RAW-READ':>9} {'REPORT':>9} {'RATIO':>6} {'MEM/PAGE':>9}")
        print(head)
        for gib in (int(s) for s in a.sizes.split(",") if s):
            nbytes = gib << 30
            m, addr = populated(nbytes, a.backing)
            try:
                c_ms, runs = float("inf"), 0
                py_raw = py_full = float("inf")
                for _ in range(a.rounds):  # interleave so drift hits all three alike
                    out = subprocess.run([str(floor), str(os.getpid()), hex(addr), str(nbytes),
                                          "1"], check=True, capture_output=True, text=True)
                    ms, _, nruns = out.stdout.split()
                    c_ms, runs = min(c_ms, float(ms)), int(nruns) - 1
                    py_raw = min(py_raw, timed_ms(raw_read, addr, nbytes))
                    py_full = min(py_full, timed_ms(pages.inspect, addr, nbytes))
                tracemalloc.start()
                report = pages.inspect(addr, nbytes)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                n = nbytes // PAGE
                assert report.present == n, report.present
                print(f"{gib:>4}Gi {a.backing:>7} {n:>8} {runs:>7} {c_ms:>7.1f}ms "
                      f"{py_raw:>7.1f}ms {py_full:>7.1f}ms {py_full / c_ms:>5.2f}x "
                      f"{peak / n:>7.1f} B", flush=True)
                del report
            finally:
                m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
