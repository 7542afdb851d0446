"""Register a buffer spread over many pageblocks and hold it until signalled.

A stand-in for an RDMA application with long-lived MRs, for looking at it from outside:
`rdmapin inspect`, `rdmapin fragmap`, `rdmapin trace` find it through the kernel.
Usage: python examples/hold_registered.py [MIB]   (prints "registered" when ready)
"""

from __future__ import annotations

import os
import signal
import sys

import rdmapin


def main(argv: list[str]) -> int:
    mib = int(argv[1]) if len(argv) > 1 else 64
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        buf = rdmapin.alloc(mib << 20)
        with pd.register(buf) as mr:
            print(f"registered {mib} MiB, lkey {mr.lkey:#x}, pid {os.getpid()}",
                  flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main(sys.argv))
