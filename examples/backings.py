"""What backs a registered region, and what it costs in descriptors.

Registers 64 MiB three ways, 4 KiB pages, transparent huge pages and 2 MiB hugetlb pages, and
prints rdmapin's page report for each MR: backing, physical runs, and how many DMA blocks a
device needs at each page size (rxe maps every 4 KiB page; a 2 MiB-capable NIC would not).
Run it where an RDMA device exists: ci/vm/run -- python examples/backings.py
"""

from __future__ import annotations

import sys

import rdmapin
from rdmapin.kernel import procfs

SIZE = 64 << 20


def main() -> int:
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        for kind in ("4k", "thp", "2m"):
            arr = rdmapin.empty(SIZE, "uint8", pages=kind)
            arr[:] = 1  # populate before registering, so the report shows what will be pinned
            pin0 = procfs.vm_pin()
            with pd.register(arr, access=rdmapin.Access.LOCAL_WRITE) as mr:
                print(f"== {kind}: 64 MiB registered, lkey {mr.lkey:#x}, "
                      f"VmPin +{(procfs.vm_pin() - pin0) >> 10} kB")
                print(mr.pages())
                print()
            del arr
    return 0


if __name__ == "__main__":
    sys.exit(main())
