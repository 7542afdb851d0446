"""Do the kernel's pin counters agree with the MRs a process holds? If not, why not.

Every ``ib_umem_get`` pins each base page of its span with FOLL_PIN|FOLL_LONGTERM and adds
the span's page count to ``mm->pinned_vm`` (VmPin). So, for one process,
VmPin == sum over its MRs of ib_umem_num_pages, and the global
nr_foll_pin_acquired - nr_foll_pin_released is at least that sum. Overlapping MRs are
charged twice (each pins again); pins no MR explains come from io_uring fixed buffers,
VFIO, other drivers or a leak; an MR whose pages are no longer mapped still pins the old
ones.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from rdmapin import registry
from rdmapin.errors import RdmapinError
from rdmapin.kernel import pagemap, procfs, rdma_res
from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.pages.descriptors import num_pages


@dataclass(frozen=True)
class MrView:
    """One MR as reconcile sees it: from rdmapin's registry, the kernel, or both."""

    source: str  # "rdmapin", "kernel" or "rdmapin+kernel"
    device: str
    addr: int | None  # None when only the kernel knows it and hides the IOVA
    length: int
    lkey: int | None
    pages: int  # base pages the kernel charged (ib_umem_num_pages)
    present: int | None  # of those, mapped in the page table now (None: address unknown)


@dataclass
class Reconciliation:
    pid: int
    comm: str  # /proc/PID/comm, as set (status' Name: escapes \n and \\); print escaped
    vm_pin: int  # bytes
    vm_lck: int  # bytes
    mrs: list[MrView]
    mr_pinned: int  # bytes: sum of every MR's charge (what VmPin should be)
    mr_unique: int  # bytes: the union of MR page ranges (where addresses are known)
    overlap: int  # bytes pinned more than once by overlapping MRs
    foll_pins: int  # pages pinned system-wide right now (FOLL_PIN acquired - released)
    unexplained: int  # bytes of VmPin no MR accounts for (negative: MRs not charged)
    agrees: bool
    findings: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mrs"] = [asdict(m) for m in self.mrs]
        return d

    def __str__(self) -> str:
        from rdmapin.kernel.printable import escape
        from rdmapin.kernel.units import human

        lines = [
            f"pid {self.pid} ({escape(self.comm)})",
            f"VmPin       {human(self.vm_pin):>12}  ({self.vm_pin // PAGE_SIZE} pages)",
            f"MRs         {human(self.mr_pinned):>12}  ({len(self.mrs)} MRs, "
            f"{self.mr_pinned // PAGE_SIZE} pages charged)",
            f"overlap     {human(self.overlap):>12}  (pinned twice or more)",
            f"unexplained {human(abs(self.unexplained)):>12}"
            f"{' (MRs exceed VmPin)' if self.unexplained < 0 else ''}",
            f"VmLck       {human(self.vm_lck):>12}",
            f"FOLL_PIN    {self.foll_pins:>12}  pages system-wide",
            "verdict     " + ("VmPin == sum of MR charges" if self.agrees else "MISMATCH"),
        ]
        lines += [f"finding     {f}" for f in self.findings]
        lines += [f"limit       {m}" for m in self.limits]
        return "\n".join(lines)


def _union_pages(spans: list[tuple[int, int]]) -> int:
    """Base pages covered by the union of page-aligned [start, end) spans."""
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total // PAGE_SIZE


def _present(pid: int, addr: int, length: int) -> int | None:
    try:
        return int(pagemap.present(pagemap.read(pid, addr, length)).sum())
    except RdmapinError:
        return None


def _mr_views(pid: int, limits: list[str]) -> list[MrView]:
    own = registry.live() if pid == os.getpid() else []
    why = rdma_res.available()
    kernel = rdma_res.mrs(pid) if why is None else []
    if why is not None and pid != os.getpid():
        limits.append(f"kernel MR tracking unavailable: {why}")
    views: list[MrView] = []
    unmatched = list(kernel)
    for rec in own:
        match = next((k for k in unmatched if k.device == rec.device
                      and (k.lkey == rec.lkey if k.lkey is not None else k.length == rec.length)),
                     None)
        if match is not None:
            unmatched.remove(match)
        views.append(MrView("rdmapin+kernel" if match else "rdmapin", rec.device, rec.addr,
                            rec.length, rec.lkey, num_pages(rec.addr, rec.length),
                            _present(pid, rec.addr, rec.length)))
    for k in unmatched:
        if k.iova is not None:
            pages, present = num_pages(k.iova, k.length), _present(pid, k.iova, k.length)
        else:
            pages, present = -(-k.length // PAGE_SIZE), None
        views.append(MrView("kernel", k.device, k.iova, k.length, k.lkey, pages, present))
    if unmatched and any(k.iova is None for k in unmatched):
        limits.append("the kernel hides MR addresses from readers without CAP_NET_ADMIN; "
                      "their charge assumes a page-aligned start")
    return views


def reconcile(pid: int | None = None) -> Reconciliation:
    """Check VmPin/VmLck of ``pid`` (default: this process) against its live MRs."""
    pid = os.getpid() if pid is None else int(pid)
    try:
        st = procfs.status(pid)
    except OSError as e:
        raise RdmapinError(f"cannot read /proc/{pid}/status: {e.strerror}",
                           hint="is the pid alive?") from e
    limits: list[str] = []
    views = _mr_views(pid, limits)
    vm_pin, vm_lck = int(st.get("VmPin", 0)), int(st.get("VmLck", 0))
    charged = sum(v.pages for v in views) * PAGE_SIZE
    known = [(v.addr - v.addr % PAGE_SIZE, v.addr - v.addr % PAGE_SIZE + v.pages * PAGE_SIZE)
             for v in views if v.addr is not None]
    known_pages = sum(v.pages for v in views if v.addr is not None)
    unique_known = _union_pages(known)
    overlap = (known_pages - unique_known) * PAGE_SIZE
    unique = charged - overlap
    unexplained = vm_pin - charged
    findings: list[str] = []
    if overlap:
        findings.append(f"overlapping MRs pin {human_pages(overlap)} twice or more: each "
                        "registration pins and charges its pages again")
    if unexplained > 0:
        findings.append(f"{human_pages(unexplained)} of VmPin is not accounted for by any live "
                        "MR: io_uring fixed buffers, VFIO, another driver, or a leaked MR")
    elif unexplained < 0:
        findings.append(f"MRs add up to {human_pages(-unexplained)} more than VmPin: "
                        "an MR charged to another mm (fork) or released behind rdmapin's back")
    for v in views:
        if v.present is not None and v.present < v.pages:
            findings.append(f"MR {v.device} lkey {v.lkey} at {v.addr:#x}: "
                            f"{v.pages - v.present} of {v.pages} pages not mapped now; the MR "
                            "still pins the pages it got at registration")
    own = [v for v in views if v.source != "kernel"]
    if pid == os.getpid() and len(own) < len(views):
        findings.append(f"{len(views) - len(own)} MR(s) of this process were not registered "
                        "through rdmapin (pyverbs or C); counted from the kernel's tracking")
    foll = procfs.foll_pins()
    if foll * PAGE_SIZE < charged:
        findings.append(f"global FOLL_PIN count ({foll} pages) is below this process's MR "
                        f"charge ({charged // PAGE_SIZE} pages)")
    return Reconciliation(
        pid=pid, comm=procfs.comm(pid), vm_pin=vm_pin, vm_lck=vm_lck, mrs=views,
        mr_pinned=charged, mr_unique=unique, overlap=overlap, foll_pins=foll,
        unexplained=unexplained, agrees=unexplained == 0, findings=findings, limits=limits)


def human_pages(nbytes: int) -> str:
    from rdmapin.kernel.units import human

    return f"{human(nbytes)} ({nbytes // PAGE_SIZE} pages)"


__all__ = ["MrView", "Reconciliation", "reconcile"]
