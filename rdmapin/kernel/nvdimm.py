"""Persistent memory as the kernel lists it: /sys/bus/nd (regions, namespaces and their
fsdax/devdax personalities) and /sys/bus/dax (device-DAX instances and their driver).

Mirrors drivers/nvdimm/namespace_devs.c (``mode``, ``size``, ``holder``), pfn_devs.c and
dax_devs.c (``namespace``, ``align``, ``supported_alignments``), drivers/dax/bus.c (``size``,
``align``, ``target_node``, ``mappingN/{start,end}``, the bound driver: ``device_dax`` for
/dev/daxN.M, ``kmem`` for system-ram) and drivers/base/core.c (/sys/dev/char, /sys/dev/block
links). Checked on 6.1 and 6.12 with QEMU's NVDIMM (ci/vm/run --pmem); a machine without
NVDIMMs has no /sys/bus/nd and every list here is empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ND = Path("/sys/bus/nd/devices")
DAX = Path("/sys/bus/dax/devices")
SYS_DEV = Path("/sys/dev")
BLOCK = Path("/sys/block")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(path: Path, base: int = 0) -> int | None:
    text = _read(path)
    try:
        return int(text, base) if text is not None else None
    except ValueError:
        return None


def _driver(dev: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(dev / "driver"))
    except OSError:
        return None


@dataclass(frozen=True)
class DaxDevice:
    """One device-DAX instance (daxN.M)."""

    name: str
    size: int
    align: int | None  # the page size it maps with (its mmap alignment)
    target_node: int | None  # the NUMA node system-ram mode onlines it to
    driver: str | None  # "device_dax" (/dev/daxN.M) | "kmem" (system-ram) | None
    ranges: tuple[tuple[int, int], ...]  # physical [start, end] (inclusive), root only
    namespace: str | None  # namespaceN.M, for a device on an NVDIMM region
    region: str | None
    supported_alignments: tuple[int, ...]

    @property
    def mode(self) -> str:
        return {"device_dax": "devdax", "kmem": "system-ram"}.get(self.driver or "", "none")

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


@dataclass(frozen=True)
class Namespace:
    """One namespace of an NVDIMM region and what it is used as."""

    name: str
    mode: str  # "fsdax" | "devdax" | "raw" | "sector"
    size: int
    region: str
    holder: str | None  # pfnN.M / daxN.M / btt...: the personality's device
    blockdev: str | None  # pmemN (fsdax, raw, sector)
    chardev: str | None  # daxN.M (devdax)
    align: int | None


def _nd_parent(dev_dir: Path, prefix: str) -> str | None:
    """The nearest ancestor of a device's real sysfs path whose name starts with prefix."""
    for part in reversed(dev_dir.resolve().parts[:-1]):
        if part.startswith(prefix):
            return part
    return None


def _namespace_of_holder(holder: str | None) -> str | None:
    if holder is None:
        return None
    if holder.startswith("namespace"):
        return holder
    return _read(ND / holder / "namespace") or None


def dax_devices() -> list[DaxDevice]:
    """Every /sys/bus/dax device, by name."""
    if not DAX.is_dir():
        return []
    return [d for name in sorted(os.listdir(DAX)) if (d := dax_device(name)) is not None]


def dax_device(name: str) -> DaxDevice | None:
    d = DAX / name
    if not d.exists():
        return None
    ranges = []
    for m in sorted(d.glob("mapping[0-9]*")):
        start, end = _int(m / "start", 16), _int(m / "end", 16)
        if start is not None and end is not None and end:
            ranges.append((start, end))
    holder = _nd_parent(d, "dax")  # .../regionN/daxN.M/daxN.M: the nd dax device
    region = _nd_parent(d, "region")
    supported = _read(ND / holder / "supported_alignments") if holder else None
    return DaxDevice(
        name=name, size=_int(d / "size") or 0, align=_int(d / "align"),
        target_node=_int(d / "target_node"), driver=_driver(d), ranges=tuple(ranges),
        namespace=_namespace_of_holder(holder),
        region=region,
        supported_alignments=tuple(int(x) for x in supported.split()) if supported else ())


def dax_device_by_rdev(rdev: tuple[int, int]) -> DaxDevice | None:
    """The DAX device a character device number belongs to (/sys/dev/char/MAJ:MIN)."""
    link = SYS_DEV / "char" / f"{rdev[0]}:{rdev[1]}"
    if not link.exists():
        return None
    name = link.resolve().name
    return dax_device(name) if (DAX / name).exists() else None


def namespaces() -> list[Namespace]:
    if not ND.is_dir():
        return []
    out = []
    for name in sorted(os.listdir(ND)):
        if not name.startswith("namespace"):
            continue
        d = ND / name
        size = _int(d / "size") or 0
        # sysfs says "memory" for what ndctl calls fsdax, "dax" for devdax, "safe" for sector.
        raw_mode = _read(d / "mode") or "unknown"
        mode = {"memory": "fsdax", "dax": "devdax", "safe": "sector"}.get(raw_mode, raw_mode)
        if size == 0:
            continue  # a region's seed namespace: nothing allocated
        holder = _read(d / "holder") or None
        blockdev = chardev = None
        if holder:
            h = ND / holder
            blocks = list(h.glob("block/*"))
            blockdev = blocks[0].name if blocks else None
            if holder.startswith("dax"):
                chardev = next((c.name for c in h.glob("dax*") if (DAX / c.name).exists()),
                               None)
            align = _int(h / "align")
        else:
            blocks = list(d.glob("block/*"))
            blockdev = blocks[0].name if blocks else None
            align = None
        out.append(Namespace(name, mode, size, _nd_parent(d, "region") or "", holder,
                             blockdev, chardev, align))
    return out


def namespace_of_block(name: str) -> str | None:
    """The namespace a pmem block device (pmemN, pmemN.M) lives on; None for other disks."""
    d = BLOCK / name
    if not d.exists():
        return None
    real = d.resolve()
    for part in reversed(real.parts):
        if part.startswith("namespace"):
            return part
        if part.startswith(("pfn", "btt")):
            return _namespace_of_holder(part)
    return None
