"""The readers behind the DAX reports: mountinfo (parsed from synthetic lines), statx and the
file classification (on this host's real files, against os.stat and /proc/self/mountinfo).
The NVDIMM side (/sys/bus/nd, /sys/bus/dax) is tested in the --pmem guest (tests/vm/test_dax)."""

from __future__ import annotations

import os

import pytest

from rdmapin import backing
from rdmapin.errors import KernelFormatError, RdmapinOSError
from rdmapin.kernel import mountinfo, statx

SAMPLE = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "40 27 259:0 / /mnt/pm\\040dir rw,relatime shared:1 - ext4 /dev/pmem0 rw,dax=always\n"
    "41 27 259:1 / /mnt/pc rw,relatime - ext4 /dev/pmem0.1 rw,dax=never\n"
    "42 27 259:2 / /mnt/old rw - ext4 /dev/pmem1 rw,dax\n"
)


@pytest.mark.pure
def test_mountinfo_fields_escapes_and_dax_modes():
    m = mountinfo.parse(SAMPLE)
    assert [x.point for x in m] == ["/proc", "/mnt/pm dir", "/mnt/pc", "/mnt/old"]
    assert m[1].dev == (259, 0) and m[1].fstype == "ext4" and m[1].source == "/dev/pmem0"
    assert [x.dax for x in m] == [None, "always", "never", "always"]
    assert mountinfo.holding("/mnt/pm dir/f", (259, 0), m) is m[1]
    assert mountinfo.holding("/mnt/pm dirx/f", (259, 0), m) is None  # a prefix, not a dir
    assert mountinfo.holding("/mnt/pc/f", (259, 0), m) is None  # another device's mount
    # statx's mount id wins over the device (overlayfs files report their upper layer's)
    assert mountinfo.holding("/mnt/pc/f", (0, 23), m, mnt_id=41) is m[2]
    assert mountinfo.holding("/mnt/pc/f", (259, 1), m, mnt_id=99) is m[2]  # unlisted id


@pytest.mark.pure
def test_mountinfo_bad_line_names_it():
    with pytest.raises(KernelFormatError) as e:
        mountinfo.parse("22 27 0:21 / /proc rw proc proc rw\n", "/proc/self/mountinfo")
    assert ":1:" in str(e.value) and "separator" in str(e.value)


def test_statx_agrees_with_stat(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    s, st = statx.statx(f), os.stat(f)
    assert s.ino == st.st_ino and s.size == 5000 and s.is_reg and not s.is_char
    assert s.dev == (os.major(st.st_dev), os.minor(st.st_dev))
    assert s.dax in (False, None)  # None: a kernel before 5.8
    null = statx.statx("/dev/null")
    assert null.is_char and null.rdev == (1, 3)
    with pytest.raises(RdmapinOSError) as e:
        statx.statx(tmp_path / "missing")
    assert "statx" in str(e.value) and e.value.errno == 2


def test_backing_of_real_files(tmp_path):
    assert backing.of_path("") is None and backing.of_path("[heap]") is None
    f = tmp_path / "f"
    f.write_bytes(b"x")
    got = backing.of_path(str(f))
    st = statx.statx(f)
    mount = next(m for m in mountinfo.read() if m.mount_id == st.mnt_id)
    assert got.mount == mount.point and got.fstype == mount.fstype
    assert got.kind == ("shmem" if mount.fstype in backing.NO_WRITEBACK else "pagecache")
    gone = backing.of_path("/memfd:rdmapin (deleted)")
    assert gone.kind == "shmem"
