"""/proc/PID/mountinfo: which mount (file system, source device, options) holds a file.

Mirrors fs/proc_namespace.c (``show_mountinfo``): ``ID PARENT MAJ:MIN ROOT POINT OPTS
[OPTIONAL...] - FSTYPE SOURCE SUPER_OPTS``, with space, tab, newline and backslash in paths
escaped as octal (``\\040``). ext4's ``dax=always`` / ``dax=never`` / ``dax=inode`` (and the
old ``dax``) are super options. Checked on 6.1, 6.12 and 6.18.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rdmapin.kernel.textfile import lines, read_proc

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo."""

    mount_id: int
    dev: tuple[int, int]
    root: str
    point: str
    options: tuple[str, ...]  # per-mount (rw, relatime ...)
    fstype: str
    source: str
    super_options: tuple[str, ...]  # the file system's own (dax=always ...)

    @property
    def dax(self) -> str | None:
        """The DAX mode the file system was mounted with: "always", "inode", "never", or
        None when no dax option is shown (ext4 shows dax=inode only when asked for)."""
        for opt in self.super_options + self.options:
            if opt == "dax":
                return "always"
            if opt.startswith("dax="):
                return opt[4:]
        return None


def parse(text: str, path: str = "/proc/self/mountinfo") -> list[Mount]:
    out = []
    with lines(text, path) as src:
        for line in src:
            left, sep, right = line.partition(" - ")
            if not sep:
                raise src.fail("no ' - ' separator")
            f = left.split(" ")
            fstype, source, sopts = [*right.split(" "), "", ""][:3]
            major, minor = f[2].split(":")
            out.append(Mount(int(f[0]), (int(major), int(minor)), _unescape(f[3]),
                             _unescape(f[4]), tuple(f[5].split(",")), fstype,
                             _unescape(source), tuple(sopts.split(",")) if sopts else ()))
    return out


def read(pid: int | str = "self") -> list[Mount]:
    path = f"/proc/{pid}/mountinfo"
    return parse(read_proc(path), path)


def holding(path: str, dev: tuple[int, int], mounts: list[Mount] | None = None,
            mnt_id: int | None = None) -> Mount | None:
    """The mount a file is reached through: the one numbered ``mnt_id`` (statx's
    STATX_MNT_ID, exact) when given and listed, else the mount of device ``dev`` whose mount
    point is the longest prefix of ``path``; None when neither holds it. The id matters on
    overlayfs: a regular file there reports its upper layer's device (e.g. a tmpfs under
    /run in virtme-ng's guests), not the overlay's."""
    mounts = mounts if mounts is not None else read()
    if mnt_id is not None:
        for m in mounts:
            if m.mount_id == mnt_id:
                return m
    best = None
    for m in mounts:
        if m.dev != dev:
            continue
        point = m.point.rstrip("/") + "/"
        if (path + "/").startswith(point) and (best is None or len(m.point) > len(best.point)):
            best = m
    return best
