"""Pins made before the tracer started: which PFNs they hold and whose they are.

This process's MRs come from rdmapin.registry (exact addresses). Other processes' MRs come
from the kernel's RDMA resource tracking, which gives pid, comm, length and keys but no
address (6.1 and 6.12); their ranges are found by reading the process's pagemap and the pin
counts of the pages behind it (rdmapin.kernel.kcore), then matched to the MRs by length; where
one process holds several MRs of one length, each such range names them all as candidates.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from rdmapin import registry
from rdmapin.kernel import arch, kcore, kpageflags, maps, pagemap, procfs, rdma_res
from rdmapin.trace.attribution import Owner, OwnerMap

log = logging.getLogger(__name__)

PAGE = arch.PAGE_SIZE


@dataclass
class Inventory:
    owners: list[Owner] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # one line per MR not placed, and why


def _vmas(pid: int) -> list[tuple[int, int]]:
    """User mappings of ``pid`` that can hold pinned pages (not vsyscall/vvar/vdso)."""
    return [(v.start, v.end) for v in maps.read(pid, detail=False)
            if v.path not in ("[vsyscall]", "[vvar]", "[vdso]") and v.start < 1 << 47]


def pinned_runs(pid: int) -> list[tuple[int, int, np.ndarray]]:
    """(addr, length, pfns) of each run of consecutive pinned virtual pages of ``pid`` (a
    run never spans two VMAs).

    Read in one pass: pagemap through one open for all its VMAs, page flags and pin counts
    once for every present page (a small C process maps some 140 VMAs; per VMA, the fixed
    costs of each read took most of a second under TCG)."""
    vmas = _vmas(pid)
    if not vmas:
        return []
    pfns = pagemap.pfns(pagemap.read_spans(pid, vmas))
    idx = np.flatnonzero(pfns)
    if not len(idx):
        return []
    flags = kpageflags.read(pfns[idx])
    compound = (flags & kpageflags.mask(kpageflags.KPF.COMPOUND_HEAD,
                                        kpageflags.KPF.COMPOUND_TAIL)) != 0
    pidx = idx[kcore.pinned(pfns[idx], compound)]
    if not len(pidx):
        return []
    # each entry's VMA and address: the VMAs' pages lie end to end in pfns
    pages = np.array([(hi - lo) // PAGE for lo, hi in vmas], dtype=np.int64)
    ends = np.cumsum(pages)
    vma = np.searchsorted(ends, pidx, side="right")
    starts = np.array([lo for lo, _ in vmas], dtype=np.int64)
    addr = starts[vma] + (pidx - (ends[vma] - pages[vma])) * PAGE
    cuts = np.flatnonzero((np.diff(pidx) != 1) | (np.diff(vma) != 0)) + 1
    return [(int(addr[c[0]]), len(c) * PAGE, pfns[pidx[c]])
            for c in np.split(np.arange(len(pidx)), cuts)]


def take(owners: OwnerMap, pid: int | None = None) -> Inventory:
    """Add every MR pinned right now (of ``pid``, or all) to ``owners``."""
    inv = Inventory()
    me = os.getpid()
    if pid in (None, me):
        for rec in registry.live():
            o = owners.add_range(Owner(pid=me, comm=procfs.comm(me), addr=rec.addr,
                                       length=rec.length, source="registry", lkey=rec.lkey,
                                       device=rec.device, rkey=rec.rkey,
                                       keys_from="registry"))
            inv.owners.append(o)
    try:
        kernel = rdma_res.mrs(pid)
    except Exception as e:  # no rdma tool / netlink: say so, keep tracing
        inv.unresolved.append(f"kernel MR list unreadable: {e}")
        return inv
    by_pid: dict[int, list] = {}
    for m in kernel:
        if m.pid is not None and m.pid != me:
            by_pid.setdefault(m.pid, []).append(m)
    why = kcore.unavailable() if by_pid else None
    for mpid, mrs in sorted(by_pid.items()):
        if why:
            inv.unresolved += [f"{m.comm}[{mpid}] mr lkey={m.lkey} {m.length} B: address "
                               f"unknown ({why})" for m in mrs]
            continue
        try:
            runs = pinned_runs(mpid)
        except OSError as e:
            inv.unresolved.append(f"{mrs[0].comm}[{mpid}]: cannot read its pages ({e})")
            continue
        # Match MRs to pinned runs by page count, largest first; two MRs over the same
        # pages show as one run, claimed by the first. The kernel gives no MR address (6.1
        # nor 6.12), so MRs of one size in one process cannot be told apart: each of their
        # runs names all of them as candidates rather than guess which key is whose.
        free = list(runs)
        by_size: dict[int, list[rdma_res.KernelMr]] = {}
        for m in sorted(mrs, key=lambda m: -m.length):
            by_size.setdefault(-(-m.length // PAGE), []).append(m)
        for npages, same in by_size.items():
            hits = [r for r in free if r[1] // PAGE in (npages, npages + 1)][:len(same)]
            for m in same[len(hits):]:
                inv.unresolved.append(f"{m.comm}[{mpid}] mr lkey={m.lkey} {m.length} B: no "
                                      "pinned range of that size")
            ambiguous = len(hits) > 1
            candidates = tuple(sorted(m.lkey for m in same if m.lkey is not None))
            for m, hit in zip(same, hits, strict=False):
                free.remove(hit)
                known = not ambiguous and m.lkey is not None
                o = owners.add(Owner(pid=mpid, comm=m.comm or procfs.comm(mpid), addr=hit[0],
                                     length=m.length, source="inventory",
                                     lkey=m.lkey if known else None, device=m.device,
                                     rkey=m.rkey if known else None,
                                     keys_from="netlink" if known else None,
                                     candidates=candidates if ambiguous else ()), hit[2])
                inv.owners.append(o)
        for addr, length, pfns in free:
            o = owners.add(Owner(pid=mpid, comm=procfs.comm(mpid), addr=addr, length=length,
                                 source="inventory"), pfns)
            inv.owners.append(o)
    return inv
