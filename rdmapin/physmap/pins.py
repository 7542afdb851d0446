"""Which PFNs registered memory holds right now, and whose they are.

The kernel has no page flag for "pinned", so the pins come from the MR inventory: this
process's MRs from rdmapin.registry (exact ranges, read through pagemap), and every
process the kernel's RDMA resource tracking lists from the tracer's inventory
(rdmapin.trace.inventory.pinned_runs: its pages whose pin count says DMA-pinned).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from rdmapin import registry
from rdmapin.errors import RdmapinError
from rdmapin.kernel import pagemap, rdma_res

log = logging.getLogger(__name__)


@dataclass
class PinSource:
    """One owner of pinned pages: an MR of this process or a pinned range of another."""

    pid: int
    what: str  # "mr lkey=0x.. on rxe0" or "pinned range"
    addr: int
    length: int
    pages: int

    def to_dict(self) -> dict:
        return {"pid": self.pid, "what": self.what, "addr": self.addr, "length": self.length,
                "pages": self.pages}


@dataclass
class PinSet:
    pfns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    sources: list[PinSource] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be placed, and why


def own_mrs() -> tuple[list[np.ndarray], list[PinSource]]:
    me = os.getpid()
    arrays, sources = [], []
    for rec in registry.live():
        pfns = pagemap.pinned_pfns(pagemap.read(me, rec.addr, rec.length))
        pfns = pfns[pfns != 0]
        arrays.append(pfns)
        sources.append(PinSource(me, f"mr lkey={rec.lkey:#x} on {rec.device}", rec.addr,
                                 rec.length, len(pfns)))
    return arrays, sources


def collect(pid: int | None = None) -> PinSet:
    """Pinned PFNs of ``pid``'s MRs, or of every process with MRs."""
    out = PinSet()
    arrays: list[np.ndarray] = []
    me = os.getpid()
    if pid in (None, me):
        a, s = own_mrs()
        arrays += a
        out.sources += s
    try:
        kernel = rdma_res.mrs(pid)
    except RdmapinError as e:
        out.notes.append(f"kernel MR list unreadable: {e}")
        kernel = []
    # This process's rdmapin MRs are exact already; another library's (pyverbs) are not in
    # the registry, so this process is scanned too when the kernel lists more MRs for it.
    own_kernel = sum(1 for m in kernel if m.pid == me)
    pids = sorted({m.pid for m in kernel if m.pid is not None
                   and (m.pid != me or own_kernel > len(registry.live()))})
    if pids:
        try:
            from rdmapin.kernel import kcore
            from rdmapin.trace import inventory
        except ImportError as e:  # the tracer is optional for the map
            out.notes.append(f"{len(pids)} processes with MRs not scanned: {e}")
            pids = []
        else:
            why = kcore.unavailable()
            if why:
                out.notes.append(f"MRs of pids {pids} not placed: {why}")
                pids = []
    for p in pids:
        try:
            runs = inventory.pinned_runs(p)
        except OSError as e:
            out.notes.append(f"pid {p}: cannot read its pages ({e})")
            continue
        for addr, length, pfns in runs:
            arrays.append(np.asarray(pfns, dtype=np.uint64))
            out.sources.append(PinSource(p, "pinned range", addr, length, len(pfns)))
    if arrays:
        out.pfns = np.unique(np.concatenate(arrays).astype(np.uint64))
    return out
