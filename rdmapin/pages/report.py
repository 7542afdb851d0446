"""The region report: what backs [addr, addr + length) of a process, read from the kernel.

``inspect`` reads pagemap once, kpageflags once for the present PFNs, smaps for the VMAs
covering the range and the zone layout, and decodes them with numpy (no per-page Python).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from rdmapin import backing
from rdmapin.errors import RdmapinError, RdmapinOSError
from rdmapin.kernel import kpageflags as kpf
from rdmapin.kernel import maps, memblock, nvdimm, pagemap, procfs
from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.kernel.kpageflags import KPF
from rdmapin.kernel.printable import escape_all
from rdmapin.kernel.units import human
from rdmapin.pages import folios as folio_mod
from rdmapin.pages.descriptors import DEFAULT_PGSZ_BITMAP, Descriptors, describe

_HUGE = kpf.mask(KPF.HUGE)
_MLOCKED = kpf.mask(KPF.MLOCKED)
_UNEVICTABLE = kpf.mask(KPF.UNEVICTABLE)


@dataclass
class RegionReport:
    """Everything rdmapin can tell about one address range. Counts are base pages."""

    pid: int
    comm: str
    addr: int
    length: int
    base_pages: int
    present: int
    not_present: int
    swapped: int
    mapped: int  # bytes of the range that some mapping covers
    backing_pages: dict[str, int]
    backing_folios: dict[str, int]
    folio_sizes: dict[int, int]  # folio bytes -> distinct folios
    runs: int  # physically contiguous runs of present pages
    longest_run: int  # pages
    descriptors: Descriptors | None
    descriptors_complete: bool  # False when some pages were not present
    nodes: dict[int, int]
    zones: dict[str, int]
    mlocked: int
    unevictable: int
    vmas: list[dict] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # mapped files: what backs them, where
    limits: list[str] = field(default_factory=list)  # what could not be read, and why
    pfns: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64), repr=False)
    entries: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64), repr=False)
    flags: np.ndarray | None = field(default=None, repr=False)

    @property
    def bytes(self) -> int:
        return self.length

    @property
    def thp_pte_mapped(self) -> int | None:
        """Bytes of anonymous THP mapped by PTEs, over the VMAs the range covers whole (None
        when smaps was not read or no VMA is covered whole)."""
        known = [v["thp_pte_mapped"] for v in self.vmas if v.get("thp_pte_mapped") is not None]
        return sum(known) if known else None

    def to_dict(self) -> dict:
        """JSON-ready facts (arrays left out; ``pfns`` stays on the object)."""
        return {
            "pid": self.pid, "comm": self.comm, "addr": self.addr, "bytes": self.length,
            "base_pages": self.base_pages, "page_size": PAGE_SIZE, "present": self.present,
            "not_present": self.not_present, "swapped": self.swapped, "mapped": self.mapped,
            "backing_pages": self.backing_pages, "backing_folios": self.backing_folios,
            "folio_sizes": {str(k): v for k, v in sorted(self.folio_sizes.items())},
            "runs": self.runs, "longest_run": self.longest_run,
            "descriptors": self.descriptors.to_dict() if self.descriptors else None,
            "descriptors_complete": self.descriptors_complete,
            "nodes": {str(k): v for k, v in sorted(self.nodes.items())},
            "zones": self.zones, "mlocked": self.mlocked, "unevictable": self.unevictable,
            "vmas": self.vmas, "files": self.files, "limits": self.limits,
        }

    def to_json(self) -> str:
        return json.dumps(escape_all(self.to_dict()), sort_keys=True)  # comm, paths

    def __str__(self) -> str:
        from rdmapin.pages.render import render
        return render(self)


def _hugetlb_pages(vmas: list[maps.Vma], page_addrs_first: int, count: int) -> np.ndarray:
    """Hugetlb page size (in base pages) of the VMA holding each page; 1 elsewhere."""
    out = np.ones(count, dtype=np.int64)
    for v in vmas:
        if v.hugetlb:
            out[_page_slice(v, page_addrs_first, count)] = v.kernel_page_size // PAGE_SIZE
    return out


def _page_slice(v: maps.Vma, page0: int, count: int) -> slice:
    """The range's pages (``count`` of them from address ``page0``) that lie in ``v``."""
    lo = max(v.start, page0) - page0
    hi = min(v.end, page0 + count * PAGE_SIZE) - page0
    return slice(lo // PAGE_SIZE, max(hi, lo) // PAGE_SIZE)


def _covered(v: maps.Vma, addr: int, length: int) -> bool:
    return v.start >= addr and v.end <= addr + length


def _vma_dict(v: maps.Vma, addr: int, length: int, thp_pages: int | None) -> dict:
    """The VMA's range and, when smaps was read, its own counters (else None).

    ``thp_pages`` is how many of the VMA's pages kpageflags puts in anonymous THPs. Where
    the range covers the whole VMA, those bytes minus smaps' AnonHugePages (the PMD-mapped
    ones) are THP mapped by PTEs: a split PMD (mprotect or munmap of part of a THP, NUMA
    balancing) keeps the folio whole, so the two counters differ by exactly that."""
    f = v.fields
    covered = _covered(v, addr, length)
    d: dict = {"start": v.start, "end": v.end, "perms": v.perms, "path": v.path,
               "covered": covered}
    have = bool(f)
    d["kernel_page_size"] = v.kernel_page_size if have else None
    for key, name in (("rss", "Rss"), ("anon_huge_pages", "AnonHugePages"),
                      ("locked", "Locked"), ("swap", "Swap"), ("ksm", "KSM")):
        d[key] = f.get(name, 0) if have else None
    d["hugetlb"] = f.get("Shared_Hugetlb", 0) + f.get("Private_Hugetlb", 0) if have else None
    d["flags"] = list(v.flags) if have else None
    d["thp_pte_mapped"] = (thp_pages * PAGE_SIZE - d["anon_huge_pages"]
                           if have and covered and thp_pages is not None else None)
    return d


def _thp_pages_per_vma(vmas: list[maps.Vma], geo_vmas: list[maps.Vma], addr: int,
                       length: int, page0: int, present: np.ndarray,
                       fol: folio_mod.Folios | None) -> list[int | None]:
    """Anonymous THP pages (kpageflags) inside each VMA whose PTE-mapped THP can be told
    (smaps read, the range covers it whole); None for the others and without page flags.
    Nothing is computed when no VMA qualifies (the default, smaps not read)."""
    want = [bool(v.fields) and _covered(v, addr, length) for v in vmas]
    if fol is None or not any(want):
        return [None] * len(vmas)
    category = fol.category[fol.page_folio]
    thp = np.zeros(len(present), dtype=np.int64)
    thp[present] = (category == folio_mod.CAT["thp_2m"]) | (category == folio_mod.CAT["thp_other"])
    cum = np.concatenate(([0], np.cumsum(thp)))
    out: list[int | None] = []
    for g, w in zip(geo_vmas, want, strict=True):
        sl = _page_slice(g, page0, len(present))
        out.append(int(cum[sl.stop] - cum[sl.start]) if w else None)
    return out


_ZONE_DEVICE_KINDS = ("devdax", "fsdax")


def _file_kinds(geo_vmas: list[maps.Vma], files: list[backing.FileBacking | None],
                page0: int, count: int) -> np.ndarray | None:
    """Per page of the range: the CATEGORIES index of its ZONE_DEVICE kind (devdax, fsdax)
    from the VMA holding it, -1 elsewhere; None when no such VMA is in the range."""
    if not any(f is not None and f.kind in _ZONE_DEVICE_KINDS for f in files):
        return None
    out = np.full(count, -1, dtype=np.int8)
    for g, f in zip(geo_vmas, files, strict=True):
        if f is not None and f.kind in _ZONE_DEVICE_KINDS:
            out[_page_slice(g, page0, count)] = folio_mod.CAT[f.kind]
    return out


def _file_dicts(vmas: list[maps.Vma], geo_vmas: list[maps.Vma],
                files: list[backing.FileBacking | None], page0: int, count: int,
                present: np.ndarray, pfns_all: np.ndarray) -> list[dict]:
    """One entry per file-backed VMA of the range: the file, what backs it (and where that
    was read), its pages present in the range, and for device DAX whether their PFNs lie in
    the device's physical range (/sys/bus/dax/devices/daxN.M/mappingN)."""
    out = []
    for v, g, f in zip(vmas, geo_vmas, files, strict=True):
        if f is None:
            continue
        sl = _page_slice(g, page0, count)
        d = {"start": v.start, "end": v.end, **f.to_dict(),
             "pages": int(present[sl].sum())}
        if f.kind == "devdax" and f.device:
            dev = nvdimm.dax_device(f.device)
            ranges = dev.ranges if dev else ()
            p = pfns_all[sl][present[sl]].astype(np.int64) * PAGE_SIZE
            d["device_ranges"] = [list(r) for r in ranges]
            d["in_device_range"] = (bool(np.all(np.any(
                [(p >= lo) & (p <= hi) for lo, hi in ranges], axis=0)))
                if ranges and len(p) else None)
        out.append(d)
    return out


def _runs(pfns: np.ndarray, present: np.ndarray, all_present: bool) -> tuple[int, int]:
    """(number of physically contiguous runs, longest run in pages) over present pages."""
    if not present.any():
        return 0, 0
    if all_present:
        starts = np.flatnonzero(pfns[1:] != pfns[:-1] + np.uint64(1)) + 1
        bounds = np.concatenate(([0], starts, [len(pfns)]))
        return len(bounds) - 1, int(np.diff(bounds).max())
    start = present.copy()
    start[1:] &= ~(present[:-1] & (pfns[1:] == pfns[:-1] + np.uint64(1)))
    starts = np.flatnonzero(start)
    # A run ends where the next page is a new start or not present.
    end = present.copy()
    end[:-1] &= ~(present[1:] & ~start[1:])
    ends = np.flatnonzero(end)
    return len(starts), int((ends - starts + 1).max())


# A report reads one 8-byte pagemap entry per base page. A range wider than this many pages
# is read only where it is mapped (a 128 TiB range of a small process reads its few MiB of
# mappings); if even its mapped part is wider, it is refused before any read.
MAX_PAGES = 1 << 24


def _refuse_span(pid: int, addr: int, length: int, mapped: int, nvmas: int) -> None:
    raise RdmapinError(
        f"{addr:#x}+{length} has {human(mapped)} mapped in pid {pid} ({nvmas} mappings); a "
        f"page report reads every mapped base page, at most {human(MAX_PAGES * PAGE_SIZE)}",
        hint=f"report one mapping at a time: --addr START --len SIZE from /proc/{pid}/maps, "
             "or an MR with --mr LKEY")


def _mapped_spans(vmas: list[maps.Vma], page0: int, count: int) -> list[tuple[int, int]]:
    """[start, end) of each VMA clipped to the range's pages (page-aligned)."""
    end = page0 + count * PAGE_SIZE
    return [(max(v.start, page0), min(v.end, end)) for v in vmas
            if min(v.end, end) > max(v.start, page0)]


def _compressed(vmas: list[maps.Vma], spans: list[tuple[int, int]]) -> list[maps.Vma]:
    """The VMAs in the coordinates of the mapped pages laid end to end (a sparse read)."""
    out, pos = [], 0
    for v, (lo, hi) in zip(vmas, spans, strict=True):
        out.append(dataclasses.replace(v, start=pos, end=pos + (hi - lo)))
        pos += hi - lo
    return out


def inspect(addr: int, length: int, pid: int | None = None,
            pgsz_bitmap: int = DEFAULT_PGSZ_BITMAP, detail: bool = False) -> RegionReport:
    """Report what backs [addr, addr + length) in ``pid`` (default: this process).

    ``pgsz_bitmap`` is the device page_size_cap used for the best-page-size verdict.
    ``detail`` adds each VMA's smaps counters (Rss, AnonHugePages, Locked ...); smaps
    walks the page tables again, so it is read by default only when hugetlb pages are
    present (their VMA's KernelPageSize gives the folio size).
    """
    pid = os.getpid() if pid is None else int(pid)
    first, count = pagemap.page_span(addr, length)
    page0 = first * PAGE_SIZE
    vmas = maps.covering(pid, addr, length, detail)
    if not vmas:
        raise RdmapinError(f"pid {pid} has nothing mapped at {addr:#x}+{length}",
                           hint=f"see /proc/{pid}/maps for its mappings")
    spans = _mapped_spans(vmas, page0, count)
    mapped = sum(hi - lo for lo, hi in spans)
    sparse = count > MAX_PAGES
    if sparse:
        # Only the mapped pages are read, laid end to end; page indices below are theirs.
        if mapped // PAGE_SIZE > MAX_PAGES:
            _refuse_span(pid, addr, length, mapped, len(vmas))
        entries = np.concatenate([pagemap.read(pid, lo, hi - lo) for lo, hi in spans])
    else:
        entries = pagemap.read(pid, addr, length)
    # The page geometry the per-VMA slices below use: the range's, or the mapped pages'.
    geo_vmas, geo0, geo_count = ((_compressed(vmas, spans), 0, len(entries)) if sparse
                                 else (vmas, page0, count))
    limits: list[str] = []
    files = [backing.of_path(v.path, pid) for v in vmas]
    present = pagemap.present(entries)
    all_present = bool(present.all())
    pfns_all = entries & pagemap.PFN_MASK
    if all_present:
        pfns = pfns_all
    else:
        pfns_all[~present] = 0
        pfns = pfns_all[present]
    n_present = len(pfns)
    hidden = n_present > 0 and not pfns.any()

    flags = None
    if hidden:
        limits.append("PFNs hidden: reading pagemap PFNs needs CAP_SYS_ADMIN (run as root)")
    elif n_present:
        try:
            flags = kpf.read(pfns)
        except RdmapinOSError as e:
            limits.append(f"no page flags: {e}")

    ncat = len(folio_mod.CATEGORIES)
    backing_pages = dict.fromkeys(folio_mod.CATEGORIES, 0)
    backing_folios = dict.fromkeys(folio_mod.CATEGORIES, 0)
    folio_sizes: dict[int, int] = {}
    mlocked = unevictable = 0
    folio_count = n_present
    fol = None
    if flags is not None:
        hp = None
        if (flags & _HUGE).any():
            if not detail:
                vmas = maps.covering(pid, addr, length, True)
                files = [backing.of_path(v.path, pid) for v in vmas]
                geo_vmas = (_compressed(vmas, _mapped_spans(vmas, page0, count)) if sparse
                            else vmas)
            hp = _hugetlb_pages(geo_vmas, geo0, geo_count)[present]
        excl = pagemap.exclusive(entries if all_present else entries[present])
        fol = folio_mod.group(pfns, flags, excl, hp)
        kinds = _file_kinds(geo_vmas, files, geo0, geo_count)
        if kinds is not None:
            k = kinds[present]
            fol.category[fol.page_folio[k >= 0]] = k[k >= 0]
        by_cat = np.bincount(fol.category, weights=fol.in_range, minlength=ncat)
        folios_by_cat = np.bincount(fol.category[fol.distinct], minlength=ncat)
        for i, name in enumerate(folio_mod.CATEGORIES):
            backing_pages[name] = int(by_cat[i])
            backing_folios[name] = int(folios_by_cat[i])
        sizes = np.bincount(fol.nr_pages[fol.distinct])
        folio_sizes = {int(s) * PAGE_SIZE: int(sizes[s]) for s in np.flatnonzero(sizes)}
        folio_count = int(fol.distinct.sum())
        # Folio-wide bits are the head page's (6.1 reports them on the head only).
        mlocked = int(fol.in_range[fol.head_flags & _MLOCKED != 0].sum())
        unevictable = int(fol.in_range[fol.head_flags & _UNEVICTABLE != 0].sum())

    runs, longest = _runs(pfns_all, present, all_present)  # sparse: across gaps too
    nodes: dict[int, int] = {}
    zone_counts: dict[str, int] = {}
    descriptors = None
    if n_present and not hidden:
        node, zone = memblock.lookup(pfns)
        # bincount (shifted by one for the -1 "unknown") instead of a sort: O(pages).
        for v, c in enumerate(np.bincount(node.astype(np.int64) + 1)):
            if c:
                nodes[v - 1] = int(c)
        for v, c in enumerate(np.bincount(zone.astype(np.int64) + 1)):
            if c:
                zone_counts[memblock.ZONE_NAMES[v - 1] if v else "unknown"] = int(c)
        if not sparse:  # DMA blocks are for a range one MR could cover
            descriptors = describe(addr, length, pfns, folio_count, pgsz_bitmap)
        else:
            limits.append(f"range of {human(length)}: only its {human(mapped)} mapped was "
                          "read; no DMA blocks for a range no MR could cover")
    return RegionReport(
        pid=pid, comm=procfs.comm(pid), addr=addr, length=length, base_pages=count,
        present=n_present, not_present=count - n_present, mapped=mapped,
        swapped=0 if all_present else int(pagemap.swapped(entries).sum()),
        backing_pages=backing_pages, backing_folios=backing_folios, folio_sizes=folio_sizes,
        runs=runs, longest_run=longest, descriptors=descriptors,
        descriptors_complete=n_present == count, nodes=nodes, zones=zone_counts,
        mlocked=mlocked, unevictable=unevictable,
        vmas=[_vma_dict(v, addr, length, t) for v, t in
              zip(vmas, _thp_pages_per_vma(vmas, geo_vmas, addr, length, geo0, present, fol),
                  strict=True)],
        files=_file_dicts(vmas, geo_vmas, files, geo0, geo_count, present, pfns_all),
        limits=limits,
        pfns=pfns_all, entries=entries, flags=flags,
    )
