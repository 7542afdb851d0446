"""Huge pages and contiguous memory: hugetlb pools, THP, fragmentation, movable mmzone.

Registration pins what backs a buffer; whether that can be 2 MiB pages (fewer
descriptors, fewer pageblocks spoiled for compaction) depends on these.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rdmapin import mm
from rdmapin.doctor import Check, Status
from rdmapin.kernel import mmzone, procfs
from rdmapin.kernel.units import human

HUGEPAGES = Path("/sys/kernel/mm/hugepages")
NODES = Path("/sys/devices/system/node")
THP = Path("/sys/kernel/mm/transparent_hugepage")
VM_SYSCTL = Path("/proc/sys/vm")


def _int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _selected(path: Path) -> str:
    """The bracketed choice of a sysfs multiple-choice file: 'always [madvise] never'."""
    text = path.read_text()
    return text[text.index("[") + 1:text.index("]")] if "[" in text else text.strip()


def _size_label(kb: int) -> str:
    return f"{kb >> 20}G" if kb >= 1 << 20 else f"{kb >> 10}M"


def hugetlb() -> Iterator[Check]:
    sizes = sorted(HUGEPAGES.glob("hugepages-*kB"),
                   key=lambda p: int(p.name[len("hugepages-"):-2]))
    if not sizes:
        yield Check("hugetlb", Status.WARN, "no hugetlb support (no /sys/kernel/mm/hugepages)",
                    fix="a kernel with CONFIG_HUGETLBFS")
        return
    for d in sizes:
        kb = int(d.name[len("hugepages-"):-2])
        label = _size_label(kb)
        total, free = _int(d / "nr_hugepages"), _int(d / "free_hugepages")
        rsvd, surplus = _int(d / "resv_hugepages"), _int(d / "surplus_hugepages")
        per_node = {}
        for node in sorted(NODES.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
            nd = node / "hugepages" / d.name
            if nd.is_dir():
                per_node[int(node.name[4:])] = {"total": _int(nd / "nr_hugepages"),
                                               "free": _int(nd / "free_hugepages"),
                                               "surplus": _int(nd / "surplus_hugepages")}
        data = {"size_kb": kb, "total": total, "free": free, "reserved": rsvd,
                "surplus": surplus, "nodes": per_node}
        nodes = " ".join(f"n{n} {v['free']}/{v['total']}" for n, v in per_node.items())
        value = f"{free}/{total} free, {rsvd} rsvd" + (f" ({nodes})" if nodes else "")
        name = f"hugetlb {label}"
        if free - rsvd > 0:
            yield Check(name, Status.PASS, value, data=data)
        else:
            fix = (f"echo N > {d}/nr_hugepages (per node: the same file under "
                   f"{NODES}/nodeX/hugepages/), or boot with hugepagesz={label} hugepages=N")
            # 2 MiB is what rdmapin's 2m backing uses; other sizes are optional.
            status = Status.WARN if kb == 2048 else Status.PASS
            yield Check(name, status, value + ("" if status else " (optional)"),
                        fix=fix if status else None, data=data)


def thp() -> Iterator[Check]:
    if not (THP / "enabled").exists():
        yield Check("thp", Status.WARN, "no transparent hugepages",
                    fix="a kernel with CONFIG_TRANSPARENT_HUGEPAGE")
        return
    enabled, defrag = _selected(THP / "enabled"), _selected(THP / "defrag")
    data = {"enabled": enabled, "defrag": defrag}
    value = f"enabled={enabled} defrag={defrag}"
    if enabled == "never":
        yield Check("thp", Status.WARN, value, data=data,
                    fix=f"echo madvise > {THP}/enabled (rdmapin's thp backing madvises)")
    elif defrag == "never":
        yield Check("thp", Status.WARN, value + " (faults never compact)", data=data,
                    fix=f"echo madvise > {THP}/defrag")
    else:
        yield Check("thp", Status.PASS, value, data=data)


def fragmentation(order: int | None = None) -> Iterator[Check]:
    """Free 2 MiB-capable blocks per zone and the kernel's unusable index at that order.

    The index is read from debugfs (extfrag/unusable_index) where it is mounted, else
    computed from /proc/buddyinfo with the kernel's own formula.
    """
    order = mmzone.pageblock_order() if order is None else order
    kernel = mmzone.unusable_index_debugfs()
    for fa in mmzone.buddyinfo():
        free = fa.free_pages
        blocks = fa.suitable_blocks(order)
        index = (kernel[(fa.node, fa.zone)][order]
                 if kernel and (fa.node, fa.zone) in kernel else fa.unusable_index(order))
        data = {"node": fa.node, "zone": fa.zone, "order": order, "free_pages": free,
                "free_blocks": blocks, "unusable_index": round(index, 3),
                "source": "debugfs" if kernel else "buddyinfo"}
        name = f"frag n{fa.node} {fa.zone}"
        value = (f"{blocks} free {human(mm.PAGE_SIZE << order)} blocks of "
                 f"{human(free * mm.PAGE_SIZE)} free; unusable {index:.3f}")
        # Half of a zone's free memory (and at least 64 MiB of it) unable to give one
        # pageblock means THP and hugetlb allocations there will need compaction first.
        if index > 0.5 and free * mm.PAGE_SIZE >= 64 << 20:
            yield Check(name, Status.WARN, value, data=data,
                        fix="echo 1 > /proc/sys/vm/compact_memory (now), raise "
                            "vm.compaction_proactiveness (background)")
        else:
            yield Check(name, Status.PASS, value, data=data)


def compaction() -> Iterator[Check]:
    path = VM_SYSCTL / "compaction_proactiveness"
    if not path.exists():
        yield Check("compaction", Status.WARN, "no proactive compaction in this kernel",
                    fix="compact by hand: echo 1 > /proc/sys/vm/compact_memory")
        return
    pro = _int(path)
    extfrag = _int(VM_SYSCTL / "extfrag_threshold") if (VM_SYSCTL / "extfrag_threshold"
                                                         ).exists() else None
    data = {"proactiveness": pro, "extfrag_threshold": extfrag}
    value = f"proactiveness {pro}" + (f", extfrag_threshold {extfrag}" if extfrag else "")
    if pro == 0:
        yield Check("compaction", Status.WARN, value + " (off)", data=data,
                    fix="sysctl -w vm.compaction_proactiveness=20")
    else:
        yield Check("compaction", Status.PASS, value, data=data)


def movable_zones() -> Iterator[Check]:
    """FOLL_LONGTERM pins migrate pages out of ZONE_MOVABLE and CMA before pinning them
    (mm/gup.c check_and_migrate_movable_pages), so registration there costs a copy."""
    movable = [z for z in mmzone.zoneinfo() if z.name == "Movable" and z.present > 0]
    cma = procfs.meminfo().get("CmaTotal", 0)
    data = {"movable": {f"n{z.node}": z.present * mm.PAGE_SIZE for z in movable}, "cma": cma}
    parts = [f"Movable {human(z.present * mm.PAGE_SIZE)} on n{z.node}" for z in movable]
    if cma:
        parts.append(f"CMA {human(cma)}")
    if not parts:
        yield Check("zones", Status.PASS, "no ZONE_MOVABLE, no CMA: pins stay where they "
                    "fault", data=data)
        return
    yield Check("zones", Status.WARN, ", ".join(parts) + ": pins there migrate first",
                data=data,
                fix="expect ibv_reg_mr to copy pages out of these zones; place MR buffers "
                    "on memory outside them (numactl/mbind, hugetlb) or boot without "
                    "movablecore=/kernelcore=")
