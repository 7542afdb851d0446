"""rdmapin.alloc with hugetlb and NUMA in the guest: 2 MiB pages on the node asked for, and
an explained error (free pages per node, how to reserve) when they are not there."""

from __future__ import annotations

from pathlib import Path

import pytest

import rdmapin
from rdmapin import explain

MIB = 1 << 20
NODE = Path("/sys/devices/system/node")


def free_2m(node: int) -> int:
    return int((NODE / f"node{node}/hugepages/hugepages-2048kB/free_hugepages").read_text())


@pytest.mark.vm
def test_2m_on_node1_uses_that_nodes_hugepages():
    before = free_2m(1)
    if before < 2:
        pytest.fail(f"node1 has {before} free 2 MiB pages; boot with more (ci/vm/run)")
    buf = rdmapin.alloc(4 * MIB, "2m", node=1)
    assert buf.backing == "2m" and buf.addr % (2 * MIB) == 0
    assert free_2m(1) == before - 2
    kps = explain.kernel_page_size(buf.addr)
    assert kps == 2 * MIB
    del buf
    assert free_2m(1) == before


@pytest.mark.vm
def test_not_enough_hugepages_on_node_bad_flow():
    free = explain.hugepages_free(2 * MIB)
    want = free[1] + 1
    with pytest.raises(rdmapin.HugepagesError) as ei:
        rdmapin.alloc(want * 2 * MIB, "2m", node=1)
    msg = str(ei.value)
    assert f"needs {want} free 2 MiB hugetlb pages on node 1" in msg
    assert f"node0: {free[0]}, node1: {free[1]}" in msg
    assert "/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages" in msg
    assert free_2m(1) == free[1]  # nothing taken
