"""Memory hotplug meets a pinned region: the block holding an MR cannot go offline.

Needs a hot-pluggable DIMM as NUMA node 1 (ci/vm/run --dimm 512M). A filler bound to node 1
takes the DIMM's first block (it holds kernel data), an 8 MiB MR lands in a clean block, and
offlining that block is attempted while the MR lives (the kernel retries until interrupted, so
the attempt is bounded) and again after the MR is closed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import rdmapin
from rdmapin.kernel import memblock, procfs
from rdmapin.pages import inspect

MEMORY = Path("/sys/devices/system/memory")


def offline(block: int, timeout: float) -> str:
    """Try to offline ``block`` for at most ``timeout`` s; return its state afterwards."""
    state = MEMORY / f"memory{block}" / "state"
    child = subprocess.Popen(["sh", "-c", f"echo offline > {state}"], stderr=subprocess.DEVNULL)
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)
        child.wait()
    return state.read_text().strip()


def main() -> int:
    filler = rdmapin.alloc(200 << 20, node=1)
    block_pages = memblock.block_pages()
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        for _attempt in range(4):
            buf = rdmapin.alloc(8 << 20, node=1)
            mr = pd.register(buf)
            pfns = inspect(mr.addr, mr.length).pfns
            block, held = Counter((pfns // block_pages).tolist()).most_common(1)[0]
            v0 = procfs.vmstat()
            state = offline(block, 3.0)
            failed = procfs.vmstat()["pgmigrate_fail"] - v0["pgmigrate_fail"]
            if failed:
                break
            mr.close()  # the block refused for kernel pages, not ours: try a fresh one
        print(f"MR lkey {mr.lkey:#x}: {held} of its pages in memory{block} (node 1)")
        print(f"  offline with the MR registered: memory{block} stays {state}; "
              f"pgmigrate_fail +{failed} in 3 s of retries")
        mr.close()
        state = offline(block, 60.0)
        print(f"  offline after closing the MR:  memory{block} is {state}")
        if state == "offline":
            (MEMORY / f"memory{block}" / "state").write_text("online")
    del filler
    return 0 if state == "offline" else 1


if __name__ == "__main__":
    sys.exit(main())
