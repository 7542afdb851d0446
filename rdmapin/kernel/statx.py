"""statx(2) of a path: the few fields the DAX reports need, STATX_ATTR_DAX above all.

``os.stat`` does not return statx's attributes; libc's ``statx`` wrapper (glibc 2.28) does.
Mirrors include/uapi/linux/stat.h (``struct statx``: the returned mask at byte 0, attributes
at 8, mode at 28, inode at 32, size at 40, attributes_mask at 56, rdev at 128, dev at 136,
mnt_id at 144) and fs/stat.c, where ``STATX_ATTR_DAX`` is set for an inode that ``IS_DAX``
and STATX_MNT_ID names the mount (both Linux 5.8). Checked on 6.1 and 6.12 (ext4 -o dax
files say DAX, dax=never files and /dev/daxN.M do not) and 6.18.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import stat
import struct
from dataclasses import dataclass

from rdmapin.errors import RdmapinOSError

AT_FDCWD = -100
AT_STATX_SYNC_AS_STAT = 0
STATX_BASIC_STATS = 0x7FF
STATX_MNT_ID = 0x1000
STATX_ATTR_DAX = 0x00200000
_SIZE = 256  # sizeof(struct statx)


@dataclass(frozen=True)
class Statx:
    """What statx said about one path."""

    path: str
    mode: int
    ino: int
    size: int
    dev: tuple[int, int]  # the file system's device (major, minor)
    rdev: tuple[int, int]  # a device file's own number
    attributes: int
    attributes_mask: int
    mnt_id: int | None = None  # the mount it was reached through (/proc/PID/mountinfo's id)

    @property
    def dax(self) -> bool | None:
        """STATX_ATTR_DAX: the file's data is accessed directly (no page cache); None when
        this kernel does not report the attribute (before 5.8)."""
        if not self.attributes_mask & STATX_ATTR_DAX:
            return None
        return bool(self.attributes & STATX_ATTR_DAX)

    @property
    def is_char(self) -> bool:
        return stat.S_ISCHR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


@functools.cache
def _libc_statx() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.statx
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def statx(path: str | os.PathLike[str]) -> Statx:
    """statx(AT_FDCWD, path, 0, STATX_BASIC_STATS | STATX_MNT_ID); RdmapinOSError when it
    fails."""
    raw = os.fsencode(path)
    buf = ctypes.create_string_buffer(_SIZE)
    if _libc_statx()(AT_FDCWD, raw, AT_STATX_SYNC_AS_STAT,
                    STATX_BASIC_STATS | STATX_MNT_ID, buf) != 0:
        err = ctypes.get_errno()
        raise RdmapinOSError(err, f"statx({os.fsdecode(raw)!r})",
                             hint="does the file exist and may this user reach it?")
    b = buf.raw
    attributes, = struct.unpack_from("<Q", b, 8)
    mode, = struct.unpack_from("<H", b, 28)
    ino, size = struct.unpack_from("<QQ", b, 32)
    mask, = struct.unpack_from("<Q", b, 56)
    rmaj, rmin, dmaj, dmin = struct.unpack_from("<IIII", b, 128)
    returned, = struct.unpack_from("<I", b, 0)
    mnt_id = struct.unpack_from("<Q", b, 144)[0] if returned & STATX_MNT_ID else None
    return Statx(os.fsdecode(raw), mode, ino, size, (dmaj, dmin), (rmaj, rmin), attributes,
                 mask, mnt_id)
