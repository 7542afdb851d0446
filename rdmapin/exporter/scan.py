"""What the exporter reads from the kernel, one scan at a time: plain frozen facts, no
exposition. Three scans with their own cost and interval:

- ``processes``: every pid's /proc/PID/status (VmPin, VmLck), the kernel's MR list once
  (``rdma res show mr``, one netlink dump for all processes), and for each process that pins
  or holds an MR its memlock limit and the pages found pinned in it (pagemap plus pin counts
  from /proc/kcore, as ``rdmapin inspect`` reads another process): pinned bytes by backing
  and the DMA blocks a device of each page size would need for them.
- ``zones``: fragmap's per-zone summary (a whole-memory kpageflags read: costly on big hosts,
  so on a slower interval), with the pinned PFNs the last process scan found.
- ``doctor``: doctor's checks.

Processes come and go while a scan runs: one that exits, or whose pid is reused by a new
process (its start time changed) between the first and the last read is left out and counted
as vanished; one whose files this user may not read is counted as unreadable, its
status-based gauges kept. Neither is an error.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from rdmapin.errors import KernelFormatError, RdmapinError
from rdmapin.kernel import kcore, kpageflags, procfs, rdma_res
from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.pages import folios
from rdmapin.pages.descriptors import (
    DEVICE_PAGE_SIZES,
    find_best_pgsz,
    layout_mask,
    num_dma_blocks,
)

log = logging.getLogger(__name__)

BACKINGS = ("4k", "thp", "hugetlb", "other")  # rdmapin inspect's columns


def coarse_backing(category: str) -> str:
    """One of BACKINGS for a folio category of rdmapin.pages.folios (as inspect prints)."""
    if category == "4k":
        return "4k"
    if category.startswith("thp"):
        return "thp"
    if category.startswith("hugetlb"):
        return "hugetlb"
    return "other"


_COARSE = np.array([BACKINGS.index(coarse_backing(c)) for c in folios.CATEGORIES])


@dataclass(frozen=True)
class ProcessFacts:
    """One process that pins memory or holds MRs. Bytes unless said otherwise."""

    pid: int
    comm: str  # as the process set it; escape before printing (kernel.printable)
    pinned: int  # VmPin
    locked: int  # VmLck
    memlock_limit: int | None  # soft RLIMIT_MEMLOCK; None: unlimited
    mrs: dict[str, tuple[int, int]]  # device -> (MRs, their bytes) from the kernel's list
    backing: dict[str, int] | None  # pinned bytes per BACKINGS; None: pages unreadable
    dma_blocks: dict[int, int] | None  # device page size -> DMA blocks over its pinned ranges
    pfns: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.uint64))

    @property
    def mr_bytes(self) -> int:
        return sum(b for _, b in self.mrs.values())


@dataclass(frozen=True)
class ProcessScan:
    at: float  # time.time() when the scan ended
    seconds: float  # how long it took (wall)
    processes: tuple[ProcessFacts, ...]  # most pinned first
    foll_pinned: int  # pages: nr_foll_pin_acquired - nr_foll_pin_released
    scanned: int  # pids whose status was read
    unreadable: int  # processes with pins whose pages (or status) this user cannot read
    vanished: int  # exited or reused while scanned
    limits: tuple[str, ...] = ()  # what could not be read at all, and why

    def pinned_pfns(self) -> np.ndarray:
        arrays = [p.pfns for p in self.processes if len(p.pfns)]
        return np.concatenate(arrays).astype(np.uint64) if arrays else np.empty(0, np.uint64)


class Vanished(Exception):
    """The process exited or its pid now names another process."""


def _kernel_mrs(limits: list[str]) -> dict[int, dict[str, tuple[int, int]]]:
    """pid -> device -> (MRs, bytes), from one dump of the kernel's MR list."""
    why = rdma_res.available()
    if why is not None:
        limits.append(f"no MR counts: {why}")
        return {}
    try:
        mrs = rdma_res.mrs()
    except RdmapinError as e:
        limits.append(f"no MR counts: {e}")
        return {}
    out: dict[int, dict[str, tuple[int, int]]] = {}
    for m in mrs:
        if m.pid is None:
            continue
        per = out.setdefault(m.pid, {})
        count, nbytes = per.get(m.device, (0, 0))
        per[m.device] = (count + 1, nbytes + m.length)
    return out


def _runs_backing(runs: list[tuple[int, int, np.ndarray]]
                  ) -> tuple[dict[str, int], dict[int, int], np.ndarray]:
    """Pinned bytes per backing, DMA blocks per device page size, and the PFNs of the
    pinned runs (addr, length, pfns) of one process."""
    backing = dict.fromkeys(BACKINGS, 0)
    blocks = dict.fromkeys(DEVICE_PAGE_SIZES, 0)
    if not runs:
        return backing, blocks, np.empty(0, np.uint64)
    every = np.concatenate([r[2] for r in runs]).astype(np.uint64)
    flags = kpageflags.read(every)
    at = 0
    for addr, length, pfns in runs:
        pfns = np.asarray(pfns, dtype=np.uint64)
        f = flags[at:at + len(pfns)]
        at += len(pfns)
        fol = folios.group(pfns, f, np.ones(len(pfns), dtype=bool), None)
        pages = np.bincount(_COARSE[fol.category], weights=fol.in_range,
                            minlength=len(BACKINGS))
        for i, name in enumerate(BACKINGS):
            backing[name] += int(pages[i]) * PAGE_SIZE
        # A device whose largest page size is P (page_size_cap: every size up to P) needs
        # ib_umem_find_best_pgsz's blocks for this range.
        lmask = layout_mask(addr, pfns)
        for size in DEVICE_PAGE_SIZES:
            bitmap = sum(s for s in DEVICE_PAGE_SIZES if s <= size)
            best = find_best_pgsz(addr, length, pfns, bitmap, lmask=lmask)
            blocks[size] += num_dma_blocks(addr, length, best or PAGE_SIZE)
    return backing, blocks, every


def _pinned_pages(pid: int) -> tuple[dict[str, int], dict[int, int], np.ndarray]:
    from rdmapin.trace import inventory  # the tracer's own reader of pinned runs

    return _runs_backing(inventory.pinned_runs(pid))


def _process(pid: int, status: dict, mrs: dict[str, tuple[int, int]], start: int,
             pages_readable: bool) -> tuple[ProcessFacts, bool]:
    """(the facts, whether its pages were readable). Raises Vanished."""
    try:
        comm = procfs.comm(pid)
        limit = procfs.memlock_limit(pid)
    except KernelFormatError:
        raise
    except (OSError, KeyError, RdmapinError) as e:
        raise Vanished(pid) from e
    backing = blocks = None
    pfns = np.empty(0, np.uint64)
    readable = False
    if pages_readable:
        try:
            backing, blocks, pfns = _pinned_pages(pid)
            readable = True
        except (OSError, RdmapinError) as e:  # no ptrace-read right on it, or it is gone
            if getattr(e, "errno", None) not in (errno.EACCES, errno.EPERM):
                raise Vanished(pid) from e
    try:
        if procfs.stat(pid).start_ticks != start:
            raise Vanished(pid)
    except KernelFormatError:
        raise
    except (OSError, RdmapinError) as e:
        raise Vanished(pid) from e
    if comm == "?":
        raise Vanished(pid)
    return ProcessFacts(pid=pid, comm=comm, pinned=int(status.get("VmPin", 0)),
                        locked=int(status.get("VmLck", 0)), memlock_limit=limit, mrs=mrs,
                        backing=backing, dma_blocks=blocks, pfns=pfns), readable


def scan_processes(pids: Iterable[int] | None = None) -> ProcessScan:
    """One pass over every process (or ``pids``): see the module's docstring."""
    t0 = time.monotonic()
    limits: list[str] = []
    kernel_mrs = _kernel_mrs(limits)
    why_pages = kcore.unavailable()
    if why_pages is not None:
        limits.append(f"no backing: {why_pages}")
    rows: list[ProcessFacts] = []
    scanned = unreadable = vanished = 0
    for pid in procfs.pids() if pids is None else pids:
        try:
            start = procfs.stat(pid).start_ticks
            status = procfs.status(pid)
        except PermissionError:
            unreadable += pid in kernel_mrs
            continue
        except KernelFormatError as e:  # a reader's bug: said, and the process left out
            limits.append(str(e))
            unreadable += 1
            continue
        except (OSError, RdmapinError):  # exited (ENOENT, ESRCH) or a zombie's empty file
            vanished += pid in kernel_mrs
            continue
        scanned += 1
        mrs = kernel_mrs.get(pid, {})
        if int(status.get("VmPin", 0)) <= 0 and not mrs:
            continue
        try:
            facts, readable = _process(pid, status, mrs, start, why_pages is None)
        except Vanished:
            vanished += 1
            continue
        except KernelFormatError as e:
            limits.append(str(e))
            unreadable += 1
            continue
        unreadable += not readable
        rows.append(facts)
    rows.sort(key=lambda p: (-p.pinned, -p.mr_bytes, p.pid))
    return ProcessScan(at=time.time(), seconds=time.monotonic() - t0, processes=tuple(rows),
                       foll_pinned=procfs.foll_pins(), scanned=scanned, unreadable=unreadable,
                       vanished=vanished, limits=tuple(limits))


@dataclass(frozen=True)
class ZoneFacts:
    node: int
    zone: str
    free_2m: int  # pageblocks entirely free now
    reachable_2m: int  # free 2 MiB blocks if every movable page moved (fragmap's formable)
    pinned_blocks: int  # pageblocks holding a pinned page
    lost_to_pins: int  # of those, the ones pins alone keep from being compacted


@dataclass(frozen=True)
class ZoneScan:
    at: float
    seconds: float
    zones: tuple[ZoneFacts, ...]
    pageblock_bytes: int


def scan_zones(pinned_pfns: np.ndarray) -> ZoneScan:
    """fragmap's per-zone summary (root: /proc/kpageflags over every PFN)."""
    from rdmapin.physmap import blocks, pins

    t0 = time.monotonic()
    pmap = blocks.build(pins.PinSet(pfns=np.unique(pinned_pfns)))
    zones = tuple(ZoneFacts(node=s.zone.node, zone=s.zone.name, free_2m=s.free_2m,
                            reachable_2m=s.formable_2m, pinned_blocks=s.pinned_blocks,
                            lost_to_pins=s.lost_to_pins) for s in pmap.summaries)
    return ZoneScan(at=time.time(), seconds=time.monotonic() - t0, zones=zones,
                    pageblock_bytes=pmap.pages_per_block * PAGE_SIZE)


@dataclass(frozen=True)
class DoctorScan:
    at: float
    seconds: float
    checks: dict[str, int]  # check name -> 0 pass, 1 warn, 2 fail (the worst of a name)


def scan_doctor() -> DoctorScan:
    from rdmapin import doctor

    t0 = time.monotonic()
    checks: dict[str, int] = {}
    for c in doctor.run_checks():
        checks[c.name] = max(checks.get(c.name, 0), int(c.status))
    return DoctorScan(at=time.time(), seconds=time.monotonic() - t0, checks=checks)
