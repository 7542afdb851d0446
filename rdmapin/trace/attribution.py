"""Who pins a PFN: the owner map the tracer joins failed PFNs against.

Owners come from the pin ledger (pins made while tracing), the in-process registry and the
start-up inventory (pins made before). A PFN nobody is known to pin is reported as unowned,
which is itself a finding: something other than an MR holds that page.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from rdmapin import registry
from rdmapin.kernel import pagemap


def unclaimed_kernel_mr(mrs: list, pid: int, length: int,
                        claimed: set[tuple[str, int]]) -> tuple[int, str] | None:
    """(lkey, device) of the first of the kernel's MRs (rdma_res.mrs) of ``pid`` with this
    length whose key no owner has claimed: on 6.1 the kernel lists no addresses, so pid and
    length are all there is to match on."""
    for m in mrs:
        if (m.pid == pid and m.length == length and m.lkey is not None
                and (m.device, m.lkey) not in claimed):
            return m.lkey, m.device
    return None


def unclaimed_own_mr(addr: int, length: int,
                     claimed: set[tuple[str, int]]) -> tuple[int, str] | None:
    """(lkey, device) of the first of this process's live MRs over exactly [addr, +length)
    whose key no owner has claimed (two MRs over one buffer are two owners)."""
    for rec in registry.live():
        if rec.addr == addr and rec.length == length and (rec.device, rec.lkey) not in claimed:
            return rec.lkey, rec.device
    return None


# Where an owner's keys were read (Owner.keys_from), most exact first: the kernel's struct
# ib_mr at registration (bpf/mrkeys.c), this process's registry, the kernel's MR list over
# netlink (matched by pid and length: what is left where the probe cannot attach).
KEYS_FROM = ("restrack_add", "registry", "netlink")


@dataclass
class Owner:
    """One pinned range and who pinned it. ``lkey`` is None until the MR is known (the
    ledger sees ib_umem_get before the MR has keys)."""

    pid: int
    comm: str
    addr: int
    length: int
    source: str  # "ledger", "registry", "inventory", "pin_user_pages"
    lkey: int | None = None
    device: str | None = None
    umem: int | None = None
    rkey: int | None = None
    keys_from: str | None = None  # one of KEYS_FROM, once lkey is known
    pages: int = 0  # PFNs of it in the owner map
    ident: int = field(default=0, compare=False)
    keys_tried: float = field(default=0.0, compare=False, repr=False)
    # The lkeys this range may be, when the kernel's MR list cannot tell (same length, no
    # address): lkey stays None rather than a guess.
    candidates: tuple[int, ...] = ()
    # The file whose page cache the pinned pages were, once a page-cache event names it:
    # the owner is then of kind "file" (the path from the pinner's /proc/PID/maps).
    file: str | None = None

    def set_keys(self, lkey: int, device: str | None, keys_from: str,
                 rkey: int | None = None) -> None:
        self.lkey, self.device, self.keys_from = lkey, device, keys_from
        if rkey is not None:
            self.rkey = rkey

    @property
    def kind(self) -> str:
        return "file" if self.file else ("pin" if self.source == "pin_user_pages" else "mr")

    def label(self) -> str:
        """'mr lkey=0x201 COMM[PID] ADDR+LENGTH', the comm as the process set it: print it
        through rdmapin.kernel.printable.escape."""
        what = "pin" if self.source == "pin_user_pages" else "mr"
        key = f" lkey={self.lkey:#x}" if self.lkey is not None else ""
        if self.candidates:
            key = " lkey=" + "|".join(f"{k:#x}" for k in self.candidates) + "?"
        where = f" file={self.file}" if self.file else ""
        return f"{what}{key} {self.comm}[{self.pid}] {self.addr:#x}+{self.length}{where}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("ident")
        d.pop("keys_tried")
        d["label"] = self.label()
        d["kind"] = self.kind
        return d


class OwnerMap:
    """PFN -> owner, with range queries (a pageblock scanned by compaction)."""

    def __init__(self) -> None:
        self.owners: dict[int, Owner] = {}
        self._pfn_owner: dict[int, int] = {}
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._next = 1

    def add(self, owner: Owner, pfns: np.ndarray) -> Owner:
        owner.ident = self._next
        self._next += 1
        pfns = np.asarray(pfns, dtype=np.uint64)
        pfns = pfns[pfns != 0]
        owner.pages = len(pfns)
        self.owners[owner.ident] = owner
        self._pfn_owner.update(dict.fromkeys(pfns.tolist(), owner.ident))
        self._sorted = None
        return owner

    def add_range(self, owner: Owner) -> Owner:
        """Add ``owner`` with the PFNs its process maps at [addr, addr+length) now."""
        try:
            pfns = pagemap.pinned_pfns(pagemap.read(owner.pid, owner.addr, owner.length))
        except Exception:  # the process may be gone already; keep the owner, no PFNs
            pfns = np.zeros(0, dtype=np.uint64)
        return self.add(owner, pfns)

    def remove(self, ident: int) -> None:
        if self.owners.pop(ident, None) is None:
            return
        self._pfn_owner = {p: o for p, o in self._pfn_owner.items() if o != ident}
        self._sorted = None

    def lookup(self, pfn: int) -> Owner | None:
        ident = self._pfn_owner.get(pfn)
        return self.owners.get(ident) if ident else None

    def pfns(self, ident: int) -> np.ndarray:
        """The PFNs held for owner ``ident``, sorted."""
        return np.sort(np.fromiter((p for p, o in self._pfn_owner.items() if o == ident),
                                   dtype=np.uint64))

    def in_range(self, start: int, end: int) -> dict[int, int]:
        """{owner ident: pinned PFNs in [start, end)}."""
        if self._sorted is None:
            if self._pfn_owner:
                keys = np.fromiter(self._pfn_owner.keys(), dtype=np.uint64,
                                   count=len(self._pfn_owner))
                vals = np.fromiter(self._pfn_owner.values(), dtype=np.int64,
                                   count=len(self._pfn_owner))
                # Not the default quicksort: numpy 2's AVX2 argsort misorders a few indices
                # in 10^5 under QEMU 7.2 TCG (the test bed; real AVX2 hardware sorts right),
                # which moved PFNs into the neighbouring pageblock. Stable takes no SIMD path.
                order = np.argsort(keys, kind="stable")
                self._sorted = (keys[order], vals[order])
            else:
                self._sorted = (np.zeros(0, np.uint64), np.zeros(0, np.int64))
        keys, vals = self._sorted
        lo, hi = np.searchsorted(keys, [start, end])
        ids, counts = np.unique(vals[lo:hi], return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist(), strict=True))

    def resolve_keys(self, owner: Owner, kernel_mrs: list | None = None) -> None:
        """Fill in lkey/device for an MR owner that has none yet: this process's registry by
        address, another's from the kernel's MR list by pid and length (first unclaimed
        match). The ledger's owners get theirs at registration where bpf/mrkeys.c attaches;
        this is what is left for the others (pins made before tracing, MRs it missed)."""
        if owner.lkey is not None or owner.candidates or owner.source == "pin_user_pages":
            return
        now = time.monotonic()
        if kernel_mrs is None and now - owner.keys_tried < 1.0:
            return  # asked the kernel a moment ago; the MR may not exist yet
        owner.keys_tried = now
        claimed = {(o.device, o.lkey) for o in self.owners.values() if o.lkey is not None}
        if owner.pid == os.getpid():
            found = unclaimed_own_mr(owner.addr, owner.length, claimed)
            if found is not None:
                owner.set_keys(*found, "registry")
            return
        if kernel_mrs is None:
            from rdmapin.kernel import rdma_res
            try:
                kernel_mrs = rdma_res.mrs(owner.pid)
            except Exception:  # rdma tool missing or failing: the owner stays keyless
                return
        found = unclaimed_kernel_mr(kernel_mrs, owner.pid, owner.length, claimed)
        if found is not None:
            owner.set_keys(*found, "netlink")
