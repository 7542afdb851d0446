"""`rdmapin pages`: what backs an address range or an MR of a process, page by page.

Reads the process's pagemap, /proc/kpageflags, smaps and the zone layout; prints the
backing (4K, THP, hugetlb, zero, KSM, file/shmem) in base pages and folios, the physical
layout, NUMA nodes and zones, and the descriptors a registration costs the kernel and a
device (DMA blocks per device page size, by the kernel's ib_umem_find_best_pgsz rule).
"""

from __future__ import annotations

import argparse
import os
import sys

from rdmapin.errors import RdmapinError
from rdmapin.kernel import rdma_res, units
from rdmapin.kernel.printable import escape_all
from rdmapin.pages import inspect
from rdmapin.pages.descriptors import DEFAULT_PGSZ_BITMAP

EXAMPLES = """examples:
  rdmapin pages --pid 4242 --addr 0x7f0000000000 --len 1G   # one range of pid 4242
  rdmapin pages --pid 4242 --mr 0x1a2b                      # the MR with this lkey
  rdmapin pages --pid 4242                                  # every MR of pid 4242
  rdmapin pages --pid 4242 --addr 0x7f0000000000 --len 2M -j   # one JSON line
  rdmapin pages ... --cap 0x201000   # best page size for a device offering 4K and 2M

--mr and the no-range form need the kernel's RDMA resource tracking (rdma res show mr)
and, for MR addresses, CAP_NET_ADMIN. PFNs and page flags need root. The process's name
and mapping paths are printed escaped (rdmapin.kernel.printable: \\x1b, \\u202e, \\xff for a
byte that is not UTF-8, \\\\ for a backslash), in JSON too.
"""


def parse_size(text: str) -> int:
    """'4096', '4K', '2M', '1G', '0x1000' -> bytes."""
    try:
        return units.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pages", help="what backs an address range or MR of a process",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--pid", type=int, default=None,
                   help="process to inspect (default: this one, which has no MRs)")
    p.add_argument("--addr", type=lambda s: int(s, 0), help="start address (0x...)")
    p.add_argument("--len", dest="length", type=parse_size, help="length: bytes, or 4K/2M/1G")
    p.add_argument("--mr", type=lambda s: int(s, 0), metavar="LKEY",
                   help="the MR with this lkey (from the kernel's resource tracking)")
    p.add_argument("--cap", type=lambda s: int(s, 0), default=DEFAULT_PGSZ_BITMAP,
                   metavar="BITMAP", help="device page_size_cap for the best-page-size verdict "
                                          f"(default {DEFAULT_PGSZ_BITMAP:#x}: 4K|64K|2M|1G)")
    p.add_argument("-j", "--json", action="store_true", help="one JSON object per region")
    p.set_defaults(func=run)


def _regions(args: argparse.Namespace, pid: int) -> list[tuple[int, int, str]]:
    if args.addr is not None or args.length is not None:
        if args.addr is None or args.length is None or args.mr is not None:
            raise RdmapinError("give --addr and --len together, or --mr alone",
                               hint="rdmapin pages --pid PID --addr 0x... --len 2M")
        return [(args.addr, args.length, "")]
    why = rdma_res.available()
    if why is not None:
        raise RdmapinError(f"cannot list MRs: {why}",
                           hint="give an explicit range with --addr and --len")
    mrs = rdma_res.mrs(pid)
    if args.mr is not None:
        mrs = [m for m in mrs if m.lkey == args.mr]
        if not mrs:
            raise RdmapinError(f"pid {pid} has no MR with lkey {args.mr:#x} in the kernel's "
                               "resource tracking", hint=f"rdma res show mr pid {pid}")
    if not mrs:
        raise RdmapinError(f"pid {pid} has no MRs", hint="give --addr and --len for a range")
    hidden = [m for m in mrs if m.iova is None]
    if hidden:
        raise RdmapinError(f"the kernel did not give the address of {len(hidden)} MR(s)",
                           hint="run as root (CAP_NET_ADMIN) or give --addr and --len")
    return [(m.iova, m.length, f"{m.device} lkey {m.lkey:#x}") for m in mrs]


def run(args: argparse.Namespace) -> int:
    pid = args.pid if args.pid is not None else os.getpid()
    out = sys.stdout
    for i, (addr, length, label) in enumerate(_regions(args, pid)):
        report = inspect(addr, length, pid=pid, pgsz_bitmap=args.cap, detail=True)
        if args.json:
            import json
            d = report.to_dict()
            d["mr"] = label or None
            out.write(json.dumps(escape_all(d), sort_keys=True) + "\n")
        else:
            if i:
                out.write("\n")
            if label:
                out.write(f"MR {label}\n")
            out.write(str(report) + "\n")
    return 0
