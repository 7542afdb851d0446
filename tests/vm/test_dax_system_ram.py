"""Device DAX given to the page allocator (``daxctl reconfigure-device --mode=system-ram``,
the kmem driver): hot-plugged memory of the device's NUMA node, offlined and onlined by
memory block like a DIMM.

Onlined as kernel memory (ZONE_NORMAL) a long-term pin stays where it is, so offlining the
block that holds an MR's pages is refused while the MR lives (pgmigrate_fail grows, the
tracer names the MR) and succeeds once it is closed. Onlined movable, registration
migrates the pages out of ZONE_MOVABLE first (pgmigrate_success by the MR's page count).

Needs a pmem guest (`ci/vm/run --pmem 1G -- python -m pytest tests/vm/test_dax_system_ram.py`;
ci/vm/guest-pmem made $RDMAPIN_PMEM_DEVDAX). daxctl refuses system-ram while the kernel
auto-onlines hot-plugged memory (Debian's 6.12 does, 6.1 does not), so the fixture sets
auto_online_blocks to offline around the reconfiguration, adds the blocks offline
(``--no-online``) and onlines one block at a time itself. The guest's boot RAM is all below
4 GiB (DMA32), so the device's block is the only Normal (or Movable) memory of its node, the
zone a node-bound user buffer is taken from first. The NVDIMM's node has no CPU (ci/vm/guest.py):
on the CPUs' node kernel allocations would land in a Normal block within seconds and keep it
online for good. At the end every block is offlined and
the device goes back to devdax for the other pmem tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from trace_util import MEMORY, assert_totals_match, buffer_on_node, offline_block, pfns_of

import rdmapin
from rdmapin.kernel import memblock, procfs
from rdmapin.trace import Kind, Tracer

pytest_plugins = ("verbs_fixtures",)
pytestmark = [pytest.mark.pmem, pytest.mark.rdma, pytest.mark.kprobes]

MR_PAGES = 2048  # 8 MiB, as in test_trace_offline
ATTEMPT_S = 2.0


def _daxctl(*args: str) -> list[dict]:
    out = subprocess.run(["daxctl", *args], capture_output=True, text=True)
    assert out.returncode == 0, f"daxctl {' '.join(args)}: {out.stderr.strip()}"
    rows = json.loads(out.stdout or "[]")
    return rows if isinstance(rows, list) else [rows]


def _blocks() -> set[int]:
    return {int(p.name[6:]) for p in MEMORY.glob("memory[0-9]*")}


def _state(block: int) -> str:
    return (MEMORY / f"memory{block}" / "state").read_text().strip()


def _zones(block: int) -> str:
    return (MEMORY / f"memory{block}" / "valid_zones").read_text().strip()


class SystemRam:
    def __init__(self, dev: str, node: int, blocks: list[int]):
        self.dev, self.node, self.blocks = dev, node, blocks

    def online(self, block: int, how: str) -> None:
        """``how``: online_kernel (ZONE_NORMAL) or online_movable."""
        (MEMORY / f"memory{block}" / "state").write_text(how)
        assert _state(block) == "online"

    def buffer_in(self, block: int, how: str, zone: str):
        """(buf, its MR_PAGES uint8 view, their PFNs) on the device's node, with ``block``
        onlined ``how`` as the one ``zone`` block there, which holds every page."""
        self.online(block, how)
        assert _zones(block) == zone
        buf, arr = buffer_on_node(MR_PAGES, self.node)
        pfns = pfns_of(arr)
        assert set((pfns // memblock.block_pages()).tolist()) == {block}, \
            f"the buffer is not all in the device's {zone} block"
        return buf, arr, pfns


@pytest.fixture(scope="module")
def system_ram() -> Iterator[SystemRam]:
    dev = os.path.basename(os.environ["RDMAPIN_PMEM_DEVDAX"])
    node = int(Path(f"/sys/bus/dax/devices/{dev}/target_node").read_text())
    auto = MEMORY / "auto_online_blocks"
    policy = auto.read_text().strip()
    before = _blocks()
    auto.write_text("offline")
    try:
        (row,) = _daxctl("reconfigure-device", "--mode=system-ram", "--no-online", dev)
    finally:
        auto.write_text(policy)
    assert row["mode"] == "system-ram", row
    blocks = sorted(_blocks() - before)
    assert blocks, f"{dev} in system-ram mode added no memory block"
    for b in blocks:
        assert _state(b) == "offline", f"memory{b} was onlined ({policy=})"
        assert (MEMORY / f"memory{b}" / f"node{node}").exists(), f"memory{b} not on node{node}"
    try:
        yield SystemRam(dev, node, blocks)
    finally:
        for b in blocks:
            if _state(b) != "offline":
                offline_block(b, 60.0)
        (row,) = _daxctl("reconfigure-device", "--mode=devdax", dev)
        assert row["mode"] == "devdax", row


def test_a_pin_refuses_offlining_its_normal_block_until_closed(system_ram, pins):
    """The tracer's memory_hotplug failures name the MR; totals equal /proc/vmstat's."""
    block = system_ram.blocks[-1]
    buf, arr, pfns = system_ram.buffer_in(block, "online_kernel", "Normal")
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        with Tracer() as t:
            mr = pd.register(arr)
            try:
                assert np.array_equal(pfns_of(arr), pfns)  # Normal: pinned in place
                v0, t0 = t.vmstat_and_totals()
                rc, state, err = offline_block(block, ATTEMPT_S)
                v1, t1 = t.vmstat_and_totals()
                deltas = assert_totals_match(v0, v1, t0, t1)
                assert state == "online", f"memory{block} went {state} with an MR in it"
                assert deltas["pgmigrate_fail"] > 0, (rc, err, deltas)
                events = t.events()
            finally:
                lkey = mr.lkey
                mr.close()
        fails = [e for e in events if e.kind == Kind.FOLIO_FAIL]
        assert fails and {e.reason for e in fails} == {"memory_hotplug"}
        ours = [e for e in fails if e.owners and e.owners[0].lkey == lkey]
        assert ours, "no failure attributed to the MR"
        assert {e.pfn for e in ours} <= set(pfns.tolist())
        migrates = [e for e in events if e.kind == Kind.MIGRATE
                    and e.reason == "memory_hotplug" and e.detail["failed"]]
        assert sum(e.detail["failed"] for e in migrates) == deltas["pgmigrate_fail"]
        print(f"{system_ram.dev} node{system_ram.node} memory{block} Normal: offline "
              f"refused (rc={rc}, {err!r}) pgmigrate_fail +{deltas['pgmigrate_fail']}, "
              f"{len(ours)} of {len(fails)} folio failures attributed to lkey {lkey:#x}")
    rc, state, err = offline_block(block, 60.0)
    assert rc == 0 and state == "offline", (rc, state, err)
    del arr
    buf.close()


def test_registering_on_movable_system_ram_migrates_the_pages_out_first(system_ram, pins):
    block = system_ram.blocks[0]
    buf, arr, _ = system_ram.buffer_in(block, "online_movable", "Movable")
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
        v0 = procfs.vmstat()
        with pd.register(arr) as mr:
            v1 = procfs.vmstat()
            after = pfns_of(arr)
            assert v1["pgmigrate_success"] - v0["pgmigrate_success"] == MR_PAGES
            assert not set((after // memblock.block_pages()).tolist()) & {block}
            zones = mr.pages().zones
            assert "Movable" not in zones, zones
    print(f"{system_ram.dev} node{system_ram.node} memory{block} Movable: registering "
          f"{MR_PAGES} pages: pgmigrate_success +{MR_PAGES}, zones then {zones}")
    rc, state, err = offline_block(block, 60.0)
    assert rc == 0 and state == "offline", (rc, state, err)
    del arr
    buf.close()
