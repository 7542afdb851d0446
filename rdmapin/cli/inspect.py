"""`rdmapin inspect`: per process, pinned bytes, MRs and what backs them.

One row per process: VmPin and VmLck from /proc/PID/status, the MRs the kernel tracks for
it, their total charge, the backing of the MR pages (4K, THP, hugetlb, other) and whether
VmPin equals the MRs' charge. Without PIDs: every process with pinned memory or MRs.

Where the kernel does not say where a process's MRs are (Linux 6.1 reports lengths and keys
only), or VmPin holds pins no MR explains (io_uring fixed buffers, VFIO), the backing is that
of the pages found pinned in its address space: its pagemap, and each page's pin count read
from /proc/kcore (as the tracer's start-up inventory does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rdmapin import mm
from rdmapin.errors import RdmapinError
from rdmapin.kernel import kcore, procfs, rdma_res
from rdmapin.kernel.printable import escape, escape_all
from rdmapin.kernel.units import short
from rdmapin.pages import inspect as inspect_region
from rdmapin.pages import reconcile
from rdmapin.trace import inventory

EXAMPLES = """examples:
  rdmapin inspect              # every process with VmPin > 0 or an MR
  rdmapin inspect 4242 4243    # these processes
  rdmapin inspect -j           # JSON lines: pid, comm, vm_pin, vm_lck, mrs, backing ...

COMM is the process's own name, escaped (rdmapin.kernel.printable: \\x1b, \\u202e, \\xff for
a byte that is not UTF-8, \\\\ for a backslash); JSON carries the same escaped text.

JSON "backing_from": "mrs" (the MRs' own ranges), "pinned pages" (the kernel gave no MR
addresses, or VmPin holds pins no MR explains: the pages found pinned in the process, by
pagemap and /proc/kcore pin counts), or why neither could be read, when the backing columns
show "?" (JSON null).
"""

COLS = (("PID", 6), ("COMM", 10), ("PINNED", 7), ("LOCKED", 7), ("MRS", 4),
        ("MR-BYTES", 8), ("4K", 6), ("THP", 6), ("HUGETLB", 7), ("OTHER", 5), ("OK", 3))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="pinned bytes, MRs and backing per process",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pids", nargs="*", type=int, metavar="PID", help="processes (default: all "
                   "with pinned memory or MRs)")
    p.add_argument("-j", "--json", action="store_true", help="JSON lines with stable keys")
    p.set_defaults(func=run)
    # Units: PINNED (VmPin), LOCKED (VmLck), MR-BYTES and the backing columns are bytes
    # with binary suffixes (K, M, G); OK says VmPin equals the MRs' charge.


def _candidates() -> list[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if procfs.vm_pin(d.name) > 0:
                pids.add(int(d.name))
        except (OSError, KeyError, ValueError):
            continue
    pids.update(m.pid for m in rdma_res.mrs() if m.pid)
    return sorted(pids)


def _add_backing(backing: dict[str, int], pid: int, addr: int, length: int) -> None:
    rep = inspect_region(addr, length, pid=pid)
    for name, pages in rep.backing_pages.items():
        key = ("4k" if name == "4k" else "thp" if name.startswith("thp")
               else "hugetlb" if name.startswith("hugetlb") else "other")
        backing[key] += pages * mm.PAGE_SIZE


def _add_mrs(backing: dict[str, int], pid: int, mrs: list) -> None:
    for mr in mrs:
        try:
            _add_backing(backing, pid, mr.addr, mr.length)
        except RdmapinError:  # unmapped meanwhile: the row still shows the rest
            continue


def row(pid: int) -> dict:
    rec = reconcile(pid)
    backing: dict[str, int] | None = {"4k": 0, "thp": 0, "hugetlb": 0, "other": 0}
    source: str | None = "mrs"
    known = all(mr.addr is not None for mr in rec.mrs)
    if known and rec.unexplained <= 0:
        _add_mrs(backing, pid, rec.mrs)
    elif (why := kcore.unavailable()) is None:
        # The kernel (6.1) does not say where another's MRs are, or VmPin holds pins no MR
        # explains (io_uring, VFIO): what is pinned in the process, wherever it is.
        source = "pinned pages"
        try:
            for addr, length, _pfns in inventory.pinned_runs(pid):
                _add_backing(backing, pid, addr, length)
        except (OSError, RdmapinError) as e:
            backing, source = None, f"pinned pages unreadable: {e}"
    elif known:
        _add_mrs(backing, pid, rec.mrs)
        source = f"mrs (pins outside them not shown: {why})"
    else:
        backing, source = None, f"no MR addresses from the kernel; {why}"
    return {"pid": pid, "comm": rec.comm, "vm_pin": rec.vm_pin, "vm_lck": rec.vm_lck,
            "mrs": len(rec.mrs), "mr_bytes": rec.mr_pinned, "backing": backing,
            "backing_from": source, "agrees": rec.agrees, "findings": rec.findings}


def run(args: argparse.Namespace) -> int:
    pids = args.pids or _candidates()
    out = sys.stdout
    if not args.json:
        out.write(" ".join(f"{h:<{w}}" if h == "COMM" else f"{h:>{w}}" for h, w in COLS)
                  .rstrip() + "\n")
    status = 0
    for pid in pids:
        try:
            r = row(pid)
        except RdmapinError as e:
            print(f"rdmapin: error: pid {pid}: {e}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            out.write(json.dumps(escape_all(r), sort_keys=True) + "\n")
            continue
        b = r["backing"]
        cols = [short(b[k]) if b else "?" for k in ("4k", "thp", "hugetlb", "other")]
        vals = (r["pid"], escape(r["comm"][:10]), short(r["vm_pin"]), short(r["vm_lck"]), r["mrs"],
                short(r["mr_bytes"]), *cols, "yes" if r["agrees"] else "NO")
        out.write(" ".join(f"{v:<{w}}" if h == "COMM" else f"{v!s:>{w}}"
                           for (h, w), v in zip(COLS, vals, strict=True)).rstrip() + "\n")
    if not pids and not args.json:
        print("rdmapin: no process has pinned memory or MRs", file=sys.stderr)
    return status
