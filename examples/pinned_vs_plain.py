"""Registered memory cannot move; plain memory can.

Allocates two 64 MiB buffers on NUMA node 0, registers one for RDMA (which pins its pages
with FOLL_LONGTERM), asks the kernel to migrate both to node 1 with move_pages(2), and prints
what the kernel's own counters say happened. Run it where an RDMA device and a second NUMA
node exist: ci/vm/run -- python examples/pinned_vs_plain.py
"""

from __future__ import annotations

import sys

import rdmapin
from rdmapin import mm
from rdmapin.kernel import procfs

SIZE = 64 << 20


def migrate(label: str, buf: rdmapin.Buffer) -> None:
    before = procfs.vmstat()
    status = mm.move_pages(mm.page_addrs(buf.addr, SIZE), 1)
    after = procfs.vmstat()
    moved = int((status == 1).sum())
    print(f"  {label:<11} {moved:>6} of {len(status)} pages now on node 1   "
          f"pgmigrate_success +{after['pgmigrate_success'] - before['pgmigrate_success']:<6} "
          f"pgmigrate_fail +{after['pgmigrate_fail'] - before['pgmigrate_fail']}")


def main() -> int:
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        pinned = rdmapin.alloc(SIZE, node=0)
        plain = rdmapin.alloc(SIZE, node=0)
        pin0, foll0 = procfs.vm_pin(), procfs.foll_pins()
        mr = pd.register(pinned, access=rdmapin.Access.LOCAL_WRITE)
        print(f"registered 64 MiB on rxe0: lkey {mr.lkey:#x}  "
              f"VmPin +{(procfs.vm_pin() - pin0) >> 10} kB  "
              f"FOLL_PIN pages +{procfs.foll_pins() - foll0}")
        print("move_pages(2) -> node 1:")
        migrate("registered", pinned)
        migrate("plain", plain)
        mr.close()
        print(f"after close: VmPin +{(procfs.vm_pin() - pin0) >> 10} kB  "
              f"FOLL_PIN pages +{procfs.foll_pins() - foll0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
