"""Text rendering of a RegionReport: one idea per line, aligned columns with units; the
process's name and the mapping paths escaped (rdmapin.kernel.printable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.kernel.printable import escape
from rdmapin.kernel.units import human

if TYPE_CHECKING:
    from rdmapin.pages.report import RegionReport


def render(r: RegionReport) -> str:
    out = [
        f"region {r.addr:#x} +{human(r.length)} ({r.length} B)  pid {r.pid} ({escape(r.comm)})",
        f"pages     {r.base_pages} x {human(PAGE_SIZE)}: present {r.present}, "
        f"not present {r.not_present}, swapped {r.swapped}"
        + (f"; mapped {human(r.mapped)} of it" if r.mapped < r.length else ""),
    ]
    out.append(f"{'BACKING':<14}{'PAGES':>10}{'FOLIOS':>10}{'BYTES':>12}")
    for name, pages in r.backing_pages.items():
        if pages:
            out.append(f"  {name:<12}{pages:>10}{r.backing_folios[name]:>10}"
                       f"{human(pages * PAGE_SIZE):>12}")
    if r.folio_sizes:
        sizes = ", ".join(f"{human(s)} x{c}" for s, c in sorted(r.folio_sizes.items()))
        out.append(f"folios    {sizes}")
    out.append(f"physical  {r.runs} contiguous runs, longest {r.longest_run} pages "
               f"({human(r.longest_run * PAGE_SIZE)})")
    if r.nodes:
        out.append("numa      " + ", ".join(f"node{n} {c}" for n, c in r.nodes.items()))
        out.append("zones     " + ", ".join(f"{z} {c}" for z, c in r.zones.items()))
    out.append(f"locked    mlocked {r.mlocked}, unevictable {r.unevictable}")
    d = r.descriptors
    if d is not None:
        note = "" if r.descriptors_complete else " (present pages only)"
        out.append(f"kernel    {d.struct_pages} struct pages pinned by a registration, "
                   f"{d.folios} folios{note}")
        out.append(f"{'DEVICE PAGE':<14}{'USABLE':>8}{'DMA BLOCKS':>12}")
        for c in d.per_size:
            blocks = str(c.blocks) if c.blocks is not None else "-"
            out.append(f"  {human(c.page_size):<12}{'yes' if c.usable else 'no':>8}{blocks:>12}")
        best = (f"{human(d.best_page_size)} -> {d.best_blocks} blocks" if d.best_page_size
                else "none (registration would fail)")
        out.append(f"device    best page size for cap {d.pgsz_bitmap:#x}: {best}")
        out.append(f"rxe       maps every {human(PAGE_SIZE)} page: {d.rxe_blocks} entries")
    for v in r.vmas:
        path = escape(v["path"]) or "[anon]"
        out.append(f"vma       {v['start']:#x}-{v['end']:#x} {v['perms']} {path}")
        if v["rss"] is not None:
            pte = (v.get("thp_pte_mapped") or 0) // PAGE_SIZE  # exact: human() rounds
            by_pte = f" (+{pte} THP page{'s' * (pte != 1)} by PTEs)" if pte else ""
            out.append(f"  smaps   {human(v['kernel_page_size'])} pages, rss {human(v['rss'])}, "
                       f"thp {human(v['anon_huge_pages'])}{by_pte}, "
                       f"locked {human(v['locked'])}, hugetlb {human(v['hugetlb'])}")
    out.extend(_file_line(f) for f in r.files)
    out.extend(f"limit     {msg}" for msg in r.limits)
    return "\n".join(out)


_KIND = {"devdax": "device DAX", "fsdax": "filesystem DAX", "pagecache": "page cache",
         "shmem": "shmem (no writeback)", "unknown": "file"}


def _file_line(f: dict) -> str:
    """'file      /mnt/f: page cache of ext4 /dev/pmem1 on /mnt, 256 pages (source ...)'."""
    what = _KIND.get(f["kind"], f["kind"])
    if f["kind"] == "devdax":
        where = f" {f['device']}" + (f" of {f['namespace']}" if f["namespace"] else "")
        if f.get("align"):
            where += f", align {human(f['align'])}"
        inside = f.get("in_device_range")
        if inside is not None:
            where += ", PFNs in its range" if inside else ", PFNs OUTSIDE its range"
    elif f["mount"]:
        where = f" of {f['fstype']} {escape(f['device'])} on {escape(f['mount'])}" + (
            f" (dax={f['dax_mode']})" if f["dax_mode"] else "")
    else:
        where = ""
    return (f"file      {escape(f['path'])}: {what}{where}, {f['pages']} pages "
            f"[{f['source']}]")
