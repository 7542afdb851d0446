"""Registered memory cannot move; plain memory can.

Allocates two 64 MiB buffers on NUMA node 0, registers one for RDMA (which pins its pages
with FOLL_LONGTERM), then asks the kernel to migrate both to node 1 with move_pages(2), and
prints what the kernel's own counters say happened. Run it where an RDMA device and a second
NUMA node exist: ci/vm/run -- python examples/pinned_vs_plain.py
"""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pyverbs.enums as e
from pyverbs.device import Context
from pyverbs.mr import MR
from pyverbs.pd import PD

from rdmapin import mm, procfs

SIZE = 64 << 20


def node0_buffer() -> tuple[mmap.mmap, np.ndarray]:
    buf = mmap.mmap(-1, SIZE)
    arr = np.frombuffer(buf, dtype=np.uint8)
    mm.mbind(arr.ctypes.data, SIZE, 0)
    arr[:: mm.PAGE_SIZE] = 1
    return buf, arr


def migrate(label: str, arr: np.ndarray) -> None:
    before = procfs.vmstat()
    status = mm.move_pages(mm.page_addrs(arr.ctypes.data, SIZE), 1)
    after = procfs.vmstat()
    moved = int((status == 1).sum())
    print(f"  {label:<11} {moved:>6} of {len(status)} pages now on node 1   "
          f"pgmigrate_success +{after['pgmigrate_success'] - before['pgmigrate_success']:<6} "
          f"pgmigrate_fail +{after['pgmigrate_fail'] - before['pgmigrate_fail']}")


def main() -> int:
    with Context(name="rxe0") as ctx, PD(ctx) as pd:
        _pbuf, pinned = node0_buffer()
        _qbuf, plain = node0_buffer()
        pin0, foll0 = procfs.vm_pin(), procfs.foll_pins()
        mr = MR(pd, SIZE, e.IBV_ACCESS_LOCAL_WRITE, address=pinned.ctypes.data)
        print(f"registered 64 MiB on rxe0: lkey {mr.lkey:#x}  VmPin +{(procfs.vm_pin() - pin0) >> 10} kB"
              f"  FOLL_PIN pages +{procfs.foll_pins() - foll0}")
        print("move_pages(2) -> node 1:")
        migrate("registered", pinned)
        migrate("plain", plain)
        mr.close()
        print(f"after dereg: VmPin +{(procfs.vm_pin() - pin0) >> 10} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
