"""Probes for what a marked test needs; each returns None when present, else why not."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

IB_CLASS = Path("/sys/class/infiniband")
TRACEFS = Path("/sys/kernel/tracing")


@functools.cache
def rdma_missing() -> str | None:
    devs = sorted(p.name for p in IB_CLASS.glob("*")) if IB_CLASS.is_dir() else []
    if not devs:
        return "no RDMA device in /sys/class/infiniband"
    if not Path("/dev/infiniband").is_dir():
        return "no /dev/infiniband (ib_uverbs not loaded)"
    return None


@functools.cache
def kprobes_missing() -> str | None:
    if not (TRACEFS / "kprobe_events").exists():
        return "kernel without kprobes (no tracefs kprobe_events)"
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if not (build / "include" / "generated" / "autoconf.h").exists():
        return f"no kernel headers at {build} for bcc"
    return None


@functools.cache
def vm_missing() -> str | None:
    if not Path("/sys/devices/system/node/node1").exists():
        return "no NUMA node 1"
    free = 0
    for node in Path("/sys/devices/system/node").glob("node[0-9]*"):
        f = node / "hugepages" / "hugepages-2048kB" / "free_hugepages"
        if f.exists():
            free += int(f.read_text())
    if free == 0:
        return "no free 2 MiB hugetlb pages"
    return None


@functools.cache
def dimm_missing() -> str | None:
    if not list(Path("/sys/bus/acpi/devices").glob("PNP0C80:*")):
        return "no hot-plugged DIMM (boot with ci/vm/run --dimm 512M)"
    if not Path("/sys/devices/system/node/node1").exists():
        return "no NUMA node 1 for the DIMM"
    return None


@functools.cache
def movable_missing() -> str | None:
    from rdmapin.kernel import mmzone

    if any(z.name == "Movable" and z.present > 0 for z in mmzone.zoneinfo()):
        return None
    return "no populated ZONE_MOVABLE (boot with ci/vm/run --append movablecore=1G)"


@functools.cache
def pmem_missing() -> str | None:
    """ci/vm/guest-pmem's namespaces: an ext4 -o dax mount, a page-cache ext4, a devdax."""
    places = {k: os.environ.get(k) for k in
              ("RDMAPIN_PMEM_DAX", "RDMAPIN_PMEM_PAGECACHE", "RDMAPIN_PMEM_DEVDAX")}
    if not all(places.values()):
        return "no NVDIMM namespaces (boot with ci/vm/run --pmem 1G)"
    gone = [p for p in places.values() if not Path(p).exists()]
    return f"{', '.join(gone)} missing" if gone else None


def host_tracing_missing() -> str | None:
    """Why the tracer's tracepoint path cannot run on this host, or None.

    Not cached: tests unmount tracefs in namespaces of their own."""
    from rdmapin.kernel import tracefs
    from rdmapin.trace import features

    if os.geteuid() != 0:
        return "tracing needs root"
    feat = features.probe()
    if feat.tracefs is None:
        return f"tracefs not mounted ({tracefs.MOUNT_TRACEFS})"
    if feat.headers == "none":
        return "no kernel headers (or stand-in) for bcc"
    return None


def need_host_tracing() -> None:
    """Skip a host tracer test that cannot run here; fail it under ci/test, which mounts
    tracefs in the host suite's own namespace (RDMAPIN_HOST_TRACING=1) so these run on
    every `make test`, a fresh machine's included."""
    import pytest

    why = host_tracing_missing()
    if why is None:
        return
    if os.environ.get("RDMAPIN_HOST_TRACING") == "1":
        pytest.fail(f"{why} (RDMAPIN_HOST_TRACING=1: failing, not skipping)", pytrace=False)
    pytest.skip(why)


@functools.cache
def prometheus_missing() -> str | None:
    import shutil

    missing = [b for b in ("prometheus", "promtool") if shutil.which(b) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian's prometheus: ci/install-deps)"
    return None


@functools.cache
def pair_missing() -> str | None:
    if os.environ.get("RDMAPIN_ROLE") not in ("a", "b"):
        return "not one of ci/vm/pair's guests (RDMAPIN_ROLE is neither a nor b)"
    if not (IB_CLASS / "rxe2").exists():
        return "no rxe2 on the link to the peer guest"
    return None


NEEDS: dict[str, Callable[[], str | None]] = {
    "rdma": rdma_missing,
    "kprobes": kprobes_missing,
    "vm": vm_missing,
    "dimm": dimm_missing,
    "movable": movable_missing,
    "pair": pair_missing,
    "pmem": pmem_missing,
    "prometheus": prometheus_missing,
}
