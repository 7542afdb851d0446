"""The package installs, its cffi extension is built against infiniband/verbs.h, and the
kernel-counter readers agree with the files they read."""

from __future__ import annotations

import os
from pathlib import Path

import rdmapin
from rdmapin.kernel import procfs


def test_cffi_shim_is_built_in_api_mode():
    from rdmapin import _lib, _verbs

    assert _verbs.lib.rdmapin_verbs_api_version() == _lib.API_VERSION
    assert Path(_verbs.__file__).suffix == ".so"


def test_errors_are_typed_and_oserrors():
    e = rdmapin.RegistrationError(12, "ibv_reg_mr(4096 B)", hint="raise ulimit -l")
    assert isinstance(e, OSError) and isinstance(e, rdmapin.RdmapinError)
    assert e.errno == 12
    assert "ENOMEM" in str(e) and "hint: raise ulimit -l" in str(e)


def test_vm_pin_matches_status_file():
    text = Path("/proc/self/status").read_text()
    line = next(x for x in text.splitlines() if x.startswith("VmPin:"))
    assert procfs.vm_pin() == int(line.split()[1]) * 1024


def test_foll_pins_from_vmstat():
    v = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
    # Another process may pin or unpin between the two reads; the counters are monotonic.
    assert procfs.foll_pins() <= int(v["nr_foll_pin_acquired"])
    assert procfs.vmstat()["nr_foll_pin_acquired"] >= int(v["nr_foll_pin_acquired"])


def test_meminfo_in_bytes_agrees_with_sysinfo_and_hugetlb_sysfs():
    m = procfs.meminfo()
    # glibc's _SC_PHYS_PAGES is sysinfo(2)'s totalram, the number MemTotal prints in kB
    assert m["MemTotal"] == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    size = m["Hugepagesize"]
    nr = Path(f"/sys/kernel/mm/hugepages/hugepages-{size >> 10}kB/nr_hugepages").read_text()
    assert m["HugePages_Total"] == int(nr)  # a page count, not bytes
