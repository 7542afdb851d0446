"""Persistent memory: DAX file systems, pmem block devices and device-DAX instances, and
whether memory on each can be registered on this kernel.

The rules (mm/gup.c, checked against 6.1 and 6.12 and in their guests): a long-term pin of a
filesystem-DAX mapping is refused with EOPNOTSUPP (check_vma_flags: vma_is_fsdax); device
DAX pins like ordinary memory; a shared writable mapping of page cache that is written back
is refused a writable long-term pin since 6.5 (EFAULT). The last one is not guessed from the
version: where an RDMA device exists, one page of an unnamed file (O_TMPFILE) on the file
system is registered for write and the kernel's answer is the verdict.
"""

from __future__ import annotations

import errno as _errno
import mmap
import os
from collections.abc import Iterator

from rdmapin.doctor import Check, Status
from rdmapin.kernel import mountinfo, nvdimm
from rdmapin.kernel.units import human

FSDAX_FIX = ("register device DAX instead (ndctl create-namespace -m devdax; "
             "rdmapin.alloc(n, path='/dev/daxN.M')), ODP on a device that has it, or a bounce "
             "buffer; or mount without DAX (page cache: then the page-cache rule applies)")


def _pmem_block(source: str) -> str | None:
    """'pmem0' for /dev/pmem0 (and pmem0.1); None for other sources."""
    name = source.rsplit("/", 1)[-1]
    return name if source.startswith("/dev/pmem") else None


def _write_pin_probe(point: str) -> tuple[bool | None, str]:
    """Register one page of an O_TMPFILE on ``point``, MAP_SHARED, for write: (allowed, why);
    None when it cannot be tried here (no RDMA device, no O_TMPFILE)."""
    from rdmapin import Access, RdmapinError, open_device
    from rdmapin.device import devices

    if not devices():
        return None, "not tried: no RDMA device to register with"
    try:
        fd = os.open(point, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        return None, f"not tried: O_TMPFILE on {point}: {os.strerror(e.errno or 0)}"
    try:
        os.ftruncate(fd, mmap.PAGESIZE)
        m = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            m[0] = 1
            with open_device(None) as dev, dev.alloc_pd() as pd:
                try:
                    pd.register(m, Access.LOCAL_WRITE).close()
                    return True, "a writable MR of a shared file mapping registered"
                except RdmapinError as e:
                    err = getattr(e, "errno", None)
                    if err == _errno.EFAULT:
                        return False, ("a writable MR was refused (EFAULT: the 6.5 rule for "
                                       "file systems that write back); read-only MRs work")
                    return None, f"probe failed: {e}"
        finally:
            m.close()
    finally:
        os.close(fd)


def _devdax_row(d: nvdimm.DaxDevice) -> Check:
    where = f"{d.namespace}, " if d.namespace else ""
    data = {"device": d.name, "mode": d.mode, "size": d.size, "align": d.align,
            "namespace": d.namespace, "target_node": d.target_node}
    if d.mode == "system-ram":
        return Check("dax ram", Status.PASS,
                     f"{d.name} ({where}{human(d.size)}) is system-ram of node "
                     f"{d.target_node} (kmem): registrable like any RAM; in its movable "
                     "blocks a pin migrates out first, elsewhere it blocks offlining",
                     data=data)
    if d.mode == "devdax":
        return Check("devdax", Status.PASS,
                     f"/dev/{d.name} ({where}{human(d.size)}, align "
                     f"{human(d.align or 0)}): registrable (ZONE_DEVICE pages, long-term "
                     "pins allowed); rdmapin.alloc(n, path='/dev/" + d.name + "')", data=data)
    return Check("devdax", Status.WARN, f"{d.name} ({where}{human(d.size)}) has no driver "
                 "bound: nothing to map", data=data,
                 fix=f"daxctl reconfigure-device --mode=devdax {d.name}")


def pmem() -> Iterator[Check]:
    """One row per DAX file system, pmem file system and DAX device; one 'dax' row saying
    there are none on a host without persistent memory."""
    rows: list[Check] = []
    mounts = mountinfo.read()
    for m in mounts:
        block = _pmem_block(m.source)
        if m.dax in ("always", "inode") or (block and m.dax != "never"):
            mode = m.dax or "inode (the default)"
            ns = nvdimm.namespace_of_block(block) if block else None
            rows.append(Check(
                "dax fs", Status.WARN,
                f"{m.point}: {m.fstype} {m.source}" + (f" ({ns})" if ns else "")
                + f", dax={mode}: DAX files here cannot be registered (the kernel refuses "
                "long-term pins of fsdax mappings: EOPNOTSUPP)",
                fix=FSDAX_FIX, data={"mount": m.point, "fstype": m.fstype,
                                     "source": m.source, "dax": m.dax, "namespace": ns}))
        elif block:
            ok, why = _write_pin_probe(m.point)
            ns = nvdimm.namespace_of_block(block)
            rows.append(Check(
                "pmem fs", Status.PASS if ok else Status.WARN,
                f"{m.point}: {m.fstype} {m.source}" + (f" ({ns})" if ns else "")
                + f" without DAX: page cache; {why}",
                fix=None if ok else "register such files read-only, or anonymous/hugetlb/"
                                    "tmpfs memory, or device DAX",
                data={"mount": m.point, "fstype": m.fstype, "source": m.source,
                      "namespace": ns, "writable_pin": ok}))
    rows.extend(_devdax_row(d) for d in nvdimm.dax_devices())
    if not rows:
        n = len(nvdimm.namespaces())
        rows.append(Check("dax", Status.PASS,
                          "no DAX file systems and no dax devices"
                          + (f" ({n} pmem namespaces unused)" if n else ""),
                          data={"namespaces": n}))
    yield from rows
