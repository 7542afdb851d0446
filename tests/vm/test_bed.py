"""The VM test bed is real: rxe devices, RDMA through registered memory, bcc probes, and
the kernel refusing to migrate pinned pages (counted by a tracepoint and /proc/vmstat)."""

from __future__ import annotations

import mmap
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rdmapin import mm
from rdmapin.kernel import procfs

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"


@pytest.mark.rdma
def test_ibv_devices_lists_both_rxe():
    out = subprocess.run(["ibv_devices"], check=True, capture_output=True, text=True).stdout
    names = {line.split()[0] for line in out.splitlines()[2:] if line.strip()}
    assert {"rxe0", "rxe1"} <= names


@pytest.mark.rdma
@pytest.mark.parametrize("name", ["rxe0", "rxe1"])
def test_pyverbs_opens_device(name):
    from pyverbs.device import Context

    with Context(name=name) as ctx:
        attr = ctx.query_device()
        port = ctx.query_port(1)
        assert attr.max_mr_size > 0
        assert port.state == 4  # IBV_PORT_ACTIVE
        assert ctx.query_gid(1, 1).gid != "0000:0000:0000:0000:0000:0000:0000:0000"


@pytest.mark.rdma
def test_rc_loopback_write_and_read_move_bytes():
    import pyverbs.enums as e
    from loopback import LoopbackPair
    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD

    size = 1 << 20
    access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ
    with Context(name="rxe0") as ctx, PD(ctx) as pd:
        src_buf, dst_buf = mmap.mmap(-1, size), mmap.mmap(-1, size)
        src = np.frombuffer(src_buf, dtype=np.uint8)
        dst = np.frombuffer(dst_buf, dtype=np.uint8)
        src[:] = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
        dst[:] = 0
        src_addr, dst_addr = src.ctypes.data, dst.ctypes.data
        src_mr = MR(pd, size, access, address=src_addr)
        dst_mr = MR(pd, size, access, address=dst_addr)
        pair = LoopbackPair(ctx, pd)
        try:
            pair.write(src_addr, size, src_mr.lkey, dst_addr, dst_mr.rkey)
            assert np.array_equal(src, dst)
            # READ 4 KiB back into a cleared slice of src from a fresh pattern in dst.
            dst[:4096] = np.arange(4096, dtype=np.uint32).view(np.uint8)[:4096]
            src[:4096] = 0
            pair.read(src_addr, 4096, src_mr.lkey, dst_addr, dst_mr.rkey)
            assert np.array_equal(src[:4096], dst[:4096])
        finally:
            pair.close()
            src_mr.close()
            dst_mr.close()
            del src, dst


@pytest.mark.kprobes
def test_bcc_tracepoint_and_kprobe_load():
    from bcc import BPF

    b = BPF(src_file=str(BPF_DIR / "smoke.c").encode())
    try:
        assert b.num_open_kprobes() == 1
        assert BPF.tracepoint_exists("migrate", "mm_migrate_pages")
    finally:
        b.cleanup()


def _buffer_on_node0(npages: int) -> tuple[mmap.mmap, np.ndarray]:
    buf = mmap.mmap(-1, npages * mm.PAGE_SIZE)
    arr = np.frombuffer(buf, dtype=np.uint8)
    mm.mbind(arr.ctypes.data, len(arr), 0)
    arr[:: mm.PAGE_SIZE] = 1  # fault every page in, on node 0
    return buf, arr


@pytest.mark.rdma
@pytest.mark.kprobes
@pytest.mark.vm
def test_pinned_pages_refuse_to_migrate_and_plain_pages_move():
    import pyverbs.enums as e
    from bcc import BPF
    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD

    npages = 64
    b = BPF(src_file=str(BPF_DIR / "smoke.c").encode())
    counts = b["counts"]

    def snap() -> tuple[int, int, int, int]:
        return tuple(int(counts[counts.Key(i)].value) for i in range(4))

    try:
        with Context(name="rxe0") as ctx, PD(ctx) as pd:
            pinned_buf, pinned = _buffer_on_node0(npages)
            plain_buf, plain = _buffer_on_node0(npages)
            pin0 = procfs.vm_pin()
            mr = MR(pd, len(pinned), e.IBV_ACCESS_LOCAL_WRITE, address=pinned.ctypes.data)
            try:
                _, _, calls, umem_bytes = snap()
                assert calls == 1 and umem_bytes == npages * mm.PAGE_SIZE
                assert procfs.vm_pin() - pin0 == npages * mm.PAGE_SIZE

                before_vm, before_tp = procfs.vmstat(), snap()
                status = mm.move_pages(mm.page_addrs(pinned.ctypes.data, len(pinned)), 1)
                after_vm, after_tp = procfs.vmstat(), snap()
                assert (status < 0).all(), status  # every pinned page stayed
                assert after_vm["pgmigrate_fail"] - before_vm["pgmigrate_fail"] == npages
                assert after_tp[1] - before_tp[1] == npages
                assert after_vm["pgmigrate_success"] == before_vm["pgmigrate_success"]

                before_vm, before_tp = procfs.vmstat(), snap()
                status = mm.move_pages(mm.page_addrs(plain.ctypes.data, len(plain)), 1)
                after_vm, after_tp = procfs.vmstat(), snap()
                assert (status == 1).all(), status
                assert after_vm["pgmigrate_success"] - before_vm["pgmigrate_success"] == npages
                assert after_tp[0] - before_tp[0] == npages
                assert after_vm["pgmigrate_fail"] == before_vm["pgmigrate_fail"]
            finally:
                mr.close()
            assert procfs.vm_pin() == pin0
            del pinned, plain
            pinned_buf.close()
            plain_buf.close()
    finally:
        b.cleanup()


@pytest.mark.rdma
def test_guest_network_is_only_the_veth_pair():
    """The network rule: nothing but lo and the veth pair, documentation-range addresses."""
    ifaces = {p.name for p in Path("/sys/class/net").iterdir()}
    assert ifaces == {"lo", "v0", "v1"}
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], check=True, capture_output=True,
                         text=True).stdout
    addrs = sorted(line.split()[3] for line in out.splitlines() if " lo " not in line)
    assert addrs == ["192.0.2.1/24", "192.0.2.2/24"]
    routes = subprocess.run(["ip", "route", "show", "default"], check=True,
                            capture_output=True, text=True).stdout
    assert routes.strip() == ""


@pytest.mark.vm
def test_guest_limits_and_hugetlb_as_configured():
    import resource

    assert resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == resource.RLIM_INFINITY
    nodes = sorted(p.name for p in Path("/sys/devices/system/node").glob("node[0-9]*"))
    assert nodes == ["node0", "node1"]
    total = sum(int((Path("/sys/devices/system/node") / n /
                     "hugepages/hugepages-2048kB/nr_hugepages").read_text()) for n in nodes)
    assert total == int(Path("/proc/sys/vm/nr_hugepages").read_text()) > 0
