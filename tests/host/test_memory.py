"""rdmapin.alloc/empty on the real kernel: alignment, the backing reported equals what smaps
says, bindings and flags land in the VMA, and the mapping goes when its last view does."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import pytest

import rdmapin
from rdmapin import explain, memory

MIB = 1 << 20


def smaps_entry(addr: int) -> dict[str, str]:
    """The smaps fields of the VMA holding addr."""
    out: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
            if inside:
                out["range"] = head
        elif inside:
            out[head.rstrip(":")] = line.split(":", 1)[1].strip()
    return out


def is_mapped(addr: int) -> bool:
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False


def test_4k_backing_is_base_pages_and_nohugepage():
    buf = rdmapin.alloc(4 * MIB)
    assert buf.backing == "4k" and buf.nbytes == 4 * MIB and buf.addr % memory.PAGE == 0
    s = smaps_entry(buf.addr)
    assert s["AnonHugePages"] == "0 kB"
    assert "nh" in s["VmFlags"].split()  # MADV_NOHUGEPAGE
    assert s["Rss"] == f"{4 * MIB // 1024} kB"  # populated up front


def test_thp_backing_reported_equals_smaps():
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("THP disabled on this kernel")
    buf = rdmapin.alloc(8 * MIB, "thp")
    assert buf.addr % (2 * MIB) == 0
    s = smaps_entry(buf.addr)
    assert "hg" in s["VmFlags"].split()  # MADV_HUGEPAGE
    anon_huge = int(s["AnonHugePages"].split()[0]) * 1024
    assert buf.mapping.thp_bytes == min(anon_huge, buf.mapping.length)
    expected = "thp" if anon_huge >= 8 * MIB else ("thp-partial" if anon_huge else "4k")
    assert buf.backing == expected


def test_dontfork_sets_vm_dontcopy():
    buf = rdmapin.alloc(MIB, dontfork=True)
    assert "dc" in smaps_entry(buf.addr)["VmFlags"].split()


def test_node_binding_lands_in_numa_maps():
    buf = rdmapin.alloc(MIB, node=0)
    line = next(x for x in Path("/proc/self/numa_maps").read_text().splitlines()
                if int(x.split()[0], 16) == buf.addr)
    assert "bind:0" in line


def test_empty_gives_array_of_shape_and_dtype_on_the_mapping():
    arr = rdmapin.empty((256, 1024), "float32", pages="thp")
    assert arr.shape == (256, 1024) and arr.dtype == np.float32
    assert arr.flags["C_CONTIGUOUS"] and arr.flags["WRITEABLE"]
    assert arr.pages == "thp" and arr.addr == arr.mapping.addr
    assert arr.mapping.length == 2 * MIB  # 1 MiB rounded up to one 2 MiB page
    arr[:] = 1.5
    assert float(arr.sum()) == 1.5 * 256 * 1024
    assert (arr + 1).mapping is None  # a result computed elsewhere is not on the mapping


def test_mapping_is_unmapped_when_last_view_goes():
    buf = rdmapin.alloc(2 * MIB)
    addr = buf.addr
    view = buf[4096:8192]
    del buf
    gc.collect()
    assert is_mapped(addr)  # the view keeps it
    del view
    gc.collect()
    assert not is_mapped(addr)


def test_bad_pages_kind_is_a_value_error():
    with pytest.raises(ValueError, match="expected one of"):
        rdmapin.alloc(4096, "64k")


def test_zero_length_is_einval():
    with pytest.raises(rdmapin.AllocationError) as ei:
        rdmapin.alloc(0)
    assert ei.value.errno == 22


def test_hugetlb_length_not_multiple_is_einval_with_rounding_hint():
    with pytest.raises(rdmapin.AllocationError) as ei:
        rdmapin.alloc(3 * MIB, "2m")
    assert ei.value.errno == 22
    assert "multiple of the 2 MiB" in str(ei.value) and str(4 * MIB) in str(ei.value)


def test_no_free_hugepages_names_free_counts_per_node():
    free = explain.hugepages_free(2 * MIB)
    want = free[-1] + 1  # one more than the system has free
    with pytest.raises(rdmapin.HugepagesError) as ei:
        rdmapin.alloc(want * 2 * MIB, "2m")
    msg = str(ei.value)
    assert ei.value.errno == 12
    assert f"needs {want} free 2 MiB hugetlb pages" in msg
    for node, count in free.items():
        if node >= 0:
            assert f"node{node}: {count}" in msg
    assert "nr_hugepages" in msg


def test_pages_spanned_counts_partial_pages():
    p = memory.PAGE
    assert explain.pages_spanned(0, p) == 1
    assert explain.pages_spanned(p - 1, 2) == 2
    assert explain.pages_spanned(10, 0) == 0
