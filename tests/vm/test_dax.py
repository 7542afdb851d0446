"""DAX, device DAX and page-cache files under a long-term pin, on the NVDIMM guest
(ci/vm/run --pmem 1G; ci/vm/guest-pmem made the namespaces): what the kernel refuses, with
which errno, and what rdmapin says about it; what backs what registers, checked against
ndctl, /sys/bus/dax and /proc/iomem; nothing left pinned (the ``pins`` fixture)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import rdmapin
from rdmapin import Access
from rdmapin.kernel import procfs

pytest_plugins = ("verbs_fixtures",)
pytestmark = [pytest.mark.pmem, pytest.mark.rdma]

MiB = 1 << 20
RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
# mm/gup.c since 6.5 refuses FOLL_LONGTERM|FOLL_WRITE pins of written-back file mappings;
# the kernels under test straddle it (6.1 before, 6.12 after): the expectation per kernel.
WRITE_PIN_RULE = tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (6, 5)


def _place(name: str) -> str:
    return os.environ[name]


def _iomem(name: str) -> list[tuple[int, int]]:
    """/proc/iomem's [start, end] ranges named ``name`` (root reads real addresses)."""
    out = []
    for line in Path("/proc/iomem").read_text().splitlines():
        rng, _, what = line.strip().partition(" : ")
        if what == name:
            lo, hi = rng.split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def _ndctl_namespace(chardev: str) -> dict:
    rows = json.loads(subprocess.run(["ndctl", "list", "-N"], check=True,
                                     capture_output=True, text=True).stdout)
    return next(r for r in (rows if isinstance(rows, list) else [rows])
                if r.get("chardev") == chardev)


@pytest.mark.parametrize("access", [Access.LOCAL_WRITE, Access.REMOTE_READ])
def test_fsdax_registration_is_refused_and_explained(pd, pins, access):
    path = os.path.join(_place("RDMAPIN_PMEM_DAX"), f"fsdax-{int(access)}")
    buf = rdmapin.alloc(MiB, path=path)
    try:
        assert buf.backing == "fsdax"
        assert buf.mapping.file.source == "statx STATX_ATTR_DAX"
        buf[:] = 5
        with pytest.raises(rdmapin.errors.FsDaxPinError) as ei:
            pd.register(buf, access)
        e = ei.value
        assert isinstance(e, rdmapin.RegistrationError)
        assert e.errno == errno.EOPNOTSUPP
        msg = str(e)
        assert path in msg and _place("RDMAPIN_PMEM_DAX") in msg and "dax=always" in msg
        assert "FOLL_LONGTERM" in msg and "device DAX" in msg and "bounce buffer" in msg
        assert (procfs.vm_pin(), procfs.foll_pins()) == pins
    finally:
        del buf
        os.unlink(path)


def test_devdax_registers_moves_bytes_and_reports_its_backing(pins):
    from loopback import LoopbackPair
    from pyverbs.device import Context
    from pyverbs.pd import PD
    from verbs_util import DEVICE

    devdax = _place("RDMAPIN_PMEM_DEVDAX")
    name = os.path.basename(devdax)
    sysfs_align = int(Path(f"/sys/bus/dax/devices/{name}/align").read_text())
    ns = _ndctl_namespace(name)
    assert sysfs_align == ns["align"]
    src = rdmapin.alloc(4 * MiB, path=devdax)
    dst = rdmapin.empty(4 * MiB, np.uint8)
    assert src.backing == "devdax" and src.mapping.page_size == sysfs_align
    assert src.addr % sysfs_align == 0
    assert src.mapping.file.namespace == ns["dev"]
    src[:] = np.random.default_rng(16).integers(0, 256, 4 * MiB, dtype=np.uint8)
    dst[:] = 0
    with Context(name=DEVICE) as ctx, PD(ctx) as vpd:
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        pair = LoopbackPair(ctx, vpd)
        try:
            with pd.register(src, RW) as s, pd.register(dst, RW) as d:
                assert procfs.vm_pin() - pins[0] == 2 * 4 * MiB
                pair.write(s.addr, 4 * MiB, s.lkey, d.addr, d.rkey)
                assert np.array_equal(src, dst)
                src[:] = 0  # READ back into the devdax region
                pair.read(s.addr, 4 * MiB, s.lkey, d.addr, d.rkey)
                assert np.array_equal(src, dst)
                r = s.pages()
                pages = 4 * MiB // 4096
                assert r.backing_pages["devdax"] == pages and r.present == pages
                (f,) = r.files
                assert f["kind"] == "devdax" and f["device"] == name
                assert f["align"] == sysfs_align and f["namespace"] == ns["dev"]
                # The device's physical range, from sysfs, is /proc/iomem's, and holds
                # every PFN the MR pinned.
                assert [tuple(x) for x in f["device_ranges"]] == _iomem(name)
                assert f["in_device_range"] is True
                blocks = {c.page_size: c.blocks for c in r.descriptors.per_size}
                assert blocks[sysfs_align] == 4 * MiB // sysfs_align
                text = str(r)
                assert f"file      {devdax}: device DAX {name} of {ns['dev']}" in text
        finally:
            pair.close()
            pd.close()
    del src
    assert procfs.vm_pin() == pins[0]


def test_pagecache_file_per_kernel(pd, pins):
    path = os.path.join(_place("RDMAPIN_PMEM_PAGECACHE"), "pagecache")
    buf = rdmapin.alloc(MiB, path=path)
    try:
        assert buf.backing == "pagecache"
        buf[:] = 7
        if WRITE_PIN_RULE:
            with pytest.raises(rdmapin.errors.FilePinError) as ei:
                pd.register(buf, Access.LOCAL_WRITE)
            msg = str(ei.value)
            assert ei.value.errno == errno.EFAULT
            assert path in msg and "6.5" in msg and "read-only" in msg
            assert (procfs.vm_pin(), procfs.foll_pins()) == pins
        else:
            with pd.register(buf, Access.LOCAL_WRITE) as mr:
                _assert_pinned_page_cache(mr, path, pins)
        with pd.register(buf, Access.REMOTE_READ) as mr:  # read-only: both kernels
            _assert_pinned_page_cache(mr, path, pins)
    finally:
        del buf
        os.unlink(path)


def _assert_pinned_page_cache(mr, path: str, pins) -> None:
    pages = MiB // 4096
    assert procfs.vm_pin() - pins[0] == MiB
    r = mr.pages()
    assert r.backing_pages["file"] == pages
    (f,) = r.files
    assert f["kind"] == "pagecache" and f["path"] == path and f["pages"] == pages
    assert f["mount"] == _place("RDMAPIN_PMEM_PAGECACHE") and f["fstype"] == "ext4"
    assert f"file      {path}: page cache of ext4" in str(r)


def test_tmpfs_shared_mapping_registers_writable_on_every_kernel(pd, pins):
    """shmem writes nothing back: the 6.5 rule does not apply to it."""
    path = "/dev/shm/rdmapin-dax-test"
    buf = rdmapin.alloc(MiB, path=path)
    try:
        assert buf.backing == "shmem"
        with pd.register(buf, Access.LOCAL_WRITE) as mr:
            assert mr.pages().backing_pages["shmem"] == MiB // 4096
    finally:
        del buf
        os.unlink(path)


def test_doctor_rows_for_each_pmem_kind():
    from rdmapin import doctor

    rows = {c.name: c for c in doctor.run_checks(["dax"])}
    fs = rows["dax fs"]
    assert fs.status is doctor.Status.WARN and fs.data["mount"] == _place("RDMAPIN_PMEM_DAX")
    assert "EOPNOTSUPP" in fs.value and fs.data["namespace"].startswith("namespace")
    pc = rows["pmem fs"]
    assert pc.data["mount"] == _place("RDMAPIN_PMEM_PAGECACHE")
    assert pc.data["writable_pin"] is (not WRITE_PIN_RULE)
    assert pc.status is (doctor.Status.WARN if WRITE_PIN_RULE else doctor.Status.PASS)
    dd = rows["devdax"]
    name = os.path.basename(_place("RDMAPIN_PMEM_DEVDAX"))
    assert dd.status is doctor.Status.PASS and dd.data["device"] == name
    assert dd.data["align"] == int(Path(f"/sys/bus/dax/devices/{name}/align").read_text())
