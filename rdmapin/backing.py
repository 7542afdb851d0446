"""What a file-backed mapping is backed by: device DAX, filesystem DAX, page cache or shmem.

The kernel decides a long-term pin (``ib_umem_get``'s ``FOLL_LONGTERM``) on exactly these
facts, so the error explanations, page reports and doctor read them here, each from what the
kernel exposes and naming that source:
  devdax     a character device whose number /sys/dev/char resolves into /sys/bus/dax
  fsdax      a file statx reports ``STATX_ATTR_DAX`` for (its mount: /proc/self/mountinfo)
  pagecache  a file on a file system that writes pages back (ext4, xfs ...: dirty tracking)
  shmem      tmpfs, memfd, SysV shm, /dev/zero: page cache nothing writes back
An anonymous mapping has no FileBacking at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rdmapin.errors import RdmapinOSError
from rdmapin.kernel import mountinfo, nvdimm
from rdmapin.kernel import statx as statx_mod

# File systems whose pages are never written back (mapping_can_writeback() is false for
# them: no BDI_CAP_WRITEBACK), so the 6.5 rule does not apply to their shared mappings.
NO_WRITEBACK = frozenset({"tmpfs", "ramfs", "hugetlbfs", "devtmpfs", "shm", "proc", "sysfs"})
# Names the kernel gives mappings of shmem files that have no path of their own.
SHMEM_NAMES = ("/memfd:", "/SYSV", "/dev/zero", "/dev/shm/", "/i915", "/dmabuf")


@dataclass(frozen=True)
class FileBacking:
    """One mapped file and what backs its pages."""

    kind: str  # "devdax" | "fsdax" | "pagecache" | "shmem" | "unknown"
    path: str
    source: str  # where the kind was read: "statx STATX_ATTR_DAX", "/sys/bus/dax/..."
    mount: str | None = None  # mount point
    fstype: str | None = None
    device: str | None = None  # /dev/pmem0 (the mount's source) or daxN.M
    dax_mode: str | None = None  # the mount's dax= option
    namespace: str | None = None  # namespaceN.M of the NVDIMM region
    align: int | None = None  # devdax: the device's page size (its mapping alignment)
    size: int | None = None  # devdax: the device's size

    @property
    def writeback(self) -> bool:
        """Its pages are written back by the file system (dirty tracking needed)."""
        return self.kind == "pagecache"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def where(self) -> str:
        """'/mnt/f on /mnt (ext4 /dev/pmem0, dax=always)' for messages."""
        if self.kind == "devdax":
            return (f"{self.path} (device DAX {self.device}"
                    + (f", {self.namespace}" if self.namespace else "") + ")")
        if self.mount is None:
            return self.path
        opts = f", dax={self.dax_mode}" if self.dax_mode else ""
        return f"{self.path} on {self.mount} ({self.fstype} {self.device}{opts})"


def _deleted(path: str) -> str:
    return path[:-len(" (deleted)")] if path.endswith(" (deleted)") else path


def _classify(path: str, pid: int | str) -> FileBacking:
    name = _deleted(path)
    # Another process's path is its mount namespace's: reach it through /proc/PID/root.
    seen = name if pid == "self" else f"/proc/{pid}/root{name}"
    try:
        st = statx_mod.statx(seen)
    except RdmapinOSError:
        kind = "shmem" if name.startswith(SHMEM_NAMES) else "unknown"
        return FileBacking(kind, path, "the mapping's name (the file is gone)")
    if st.is_char:
        dev = nvdimm.dax_device_by_rdev(st.rdev)
        if dev is not None:
            return FileBacking("devdax", path, f"/sys/bus/dax/devices/{dev.name}",
                               device=dev.name, namespace=dev.namespace, align=dev.align,
                               size=dev.size)
        return FileBacking("unknown", path, f"statx: character device {st.rdev}")
    m = mountinfo.holding(name, st.dev, mountinfo.read(pid), st.mnt_id)
    fields = {"mount": m.point, "fstype": m.fstype, "device": m.source,
              "dax_mode": m.dax} if m else {}
    if m is not None and m.source.startswith("/dev/"):
        fields["namespace"] = nvdimm.namespace_of_block(m.source[5:])
    if st.dax:
        return FileBacking("fsdax", path, "statx STATX_ATTR_DAX", **fields)
    if name.startswith(SHMEM_NAMES) or (m is not None and m.fstype in NO_WRITEBACK):
        return FileBacking("shmem", path, f"/proc/{pid}/mountinfo file system type", **fields)
    src = f"statx (no STATX_ATTR_DAX), /proc/{pid}/mountinfo"
    return FileBacking("pagecache", path, src, **fields)


def of_path(path: str, pid: int | str = "self") -> FileBacking | None:
    """The backing of a mapping named ``path`` in /proc/PID/maps; None for anonymous ones
    ("", "[heap]", "[stack]" ...)."""
    if not path or path.startswith("[") or not path.startswith("/"):
        return None
    return _classify(path, "self" if pid == "self" or pid == os.getpid() else pid)

