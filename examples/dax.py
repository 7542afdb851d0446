"""What a long-term pin can take from persistent memory and files, on this kernel.

Registers 4 MiB of each: a file on ext4 -o dax (filesystem DAX), device DAX, a shared
mapping of an ext4 file in page cache (writable, then read-only), and prints what rdmapin
says: the refusal with its reason, or the MR's page report. Then `rdmapin doctor -c dax`.
Needs the NVDIMM guest: ci/vm/run --pmem 1G -- python examples/dax.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import rdmapin
from rdmapin import Access

SIZE = 4 << 20


def attempt(pd: rdmapin.ProtectionDomain, title: str, buf: rdmapin.Buffer,
            access: Access) -> None:
    print(f"== {title} ({buf.backing}), access {access!r}")
    try:
        with pd.register(buf, access) as mr:
            print(mr.pages())
    except rdmapin.RegistrationError as e:
        print(f"{type(e).__name__}: {e}")
    print()


def main() -> int:
    print(f"kernel {os.uname().release}\n")
    dax_file = os.path.join(os.environ["RDMAPIN_PMEM_DAX"], "example")
    cache_file = os.path.join(os.environ["RDMAPIN_PMEM_PAGECACHE"], "example")
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        buf = rdmapin.alloc(SIZE, path=dax_file)
        attempt(pd, "ext4 -o dax file", buf, Access.LOCAL_WRITE)
        del buf
        buf = rdmapin.alloc(SIZE, path=os.environ["RDMAPIN_PMEM_DEVDAX"])
        attempt(pd, "device DAX", buf, Access.LOCAL_WRITE)
        del buf
        buf = rdmapin.alloc(SIZE, path=cache_file)
        attempt(pd, "ext4 page-cache file, MAP_SHARED", buf, Access.LOCAL_WRITE)
        attempt(pd, "the same, read-only MR", buf, Access.REMOTE_READ)
        del buf
    for f in (dax_file, cache_file):
        os.unlink(f)
    sys.stdout.flush()
    return subprocess.run([sys.executable, "-m", "rdmapin", "doctor", "-c", "dax"]).returncode


if __name__ == "__main__":
    sys.exit(main())
