"""Protection domains: allocation, ordered teardown with live MRs, pyverbs interop."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest
from verbs_util import DEVICE, rdma_res

import rdmapin
from rdmapin import registry
from rdmapin.kernel import procfs

pytest_plugins = ("verbs_fixtures",)


def my_pds() -> int:
    return sum(1 for r in rdma_res("pd") if r.get("pid") == os.getpid()
               and r.get("ifname") == DEVICE)


@pytest.mark.rdma
def test_pd_alloc_and_close_are_what_the_kernel_tracks(dev):
    before = my_pds()
    p = dev.alloc_pd()
    assert my_pds() == before + 1
    assert p.device == DEVICE and p.handle >= 0
    p.close()
    assert my_pds() == before


@pytest.mark.rdma
def test_closing_pd_closes_live_mrs_first(dev, pins):
    pd = dev.alloc_pd()
    bufs = [rdmapin.alloc(64 << 10) for _ in range(3)]
    mrs = [pd.register(b) for b in bufs]
    assert procfs.vm_pin() - pins[0] == 3 * (64 << 10)
    pd.close()
    assert all(m.closed for m in mrs)
    assert procfs.vm_pin() == pins[0]
    pd.close()  # idempotent


@pytest.mark.rdma
def test_mr_closed_by_its_pd_keeps_the_export_until_closed_itself(dev, pins):
    """PD close unpins at once; the Python buffer export goes with the MR's own close."""
    pd = dev.alloc_pd()
    ba = bytearray(8192)
    mr = pd.register(ba)
    pd.close()
    assert mr.closed and procfs.vm_pin() == pins[0]
    assert pd.mrs == [] and not any(r.lkey == mr.lkey for r in registry.live())
    with pytest.raises(BufferError):
        ba.extend(b"x")
    mr.close()
    ba.extend(b"x")


@pytest.mark.rdma
def test_closing_pd_while_threads_register_leaves_nothing_pinned(dev, pins):
    """Each register racing a PD close either returns an MR (unpinned by the close) or
    raises ClosedError; none is left pinned, none crashes."""
    pd = dev.alloc_pd()
    bufs = [rdmapin.alloc(4 * 4096) for _ in range(4)]
    start = threading.Barrier(len(bufs) + 1)
    got: list[rdmapin.MemoryRegion] = []
    refused: list[BaseException] = []
    other: list[BaseException] = []

    def work(buf):
        start.wait()
        while True:
            try:
                got.append(pd.register(buf))
            except rdmapin.ClosedError as e:
                refused.append(e)
                return
            except BaseException as e:  # re-raised in the main thread
                other.append(e)
                return

    threads = [threading.Thread(target=work, args=(b,)) for b in bufs]
    for t in threads:
        t.start()
    start.wait()
    while len(got) < 8 and not other:
        time.sleep(0.01)
    pd.close()
    for t in threads:
        t.join()
    assert other == [] and len(refused) == len(bufs)
    assert all(m.closed for m in got)
    assert procfs.vm_pin() == pins[0]


@pytest.mark.rdma
def test_closing_device_closes_pds_and_mrs(pins):
    d = rdmapin.open_device(DEVICE)
    pd = d.alloc_pd()
    mr = pd.register(bytearray(8192))
    d.close()
    assert pd.closed and mr.closed
    assert procfs.vm_pin() == pins[0]


@pytest.mark.rdma
def test_gc_of_pd_deallocates_it(dev, pins):
    pd = dev.alloc_pd()
    mr = pd.register(bytearray(4096))
    del pd, mr
    gc.collect()
    assert not dev._pds
    assert procfs.vm_pin() == pins[0]


@pytest.mark.rdma
def test_register_into_closed_pd_bad_flow(dev, pins):
    pd = dev.alloc_pd()
    pd.close()
    with pytest.raises(rdmapin.ClosedError, match="closed"):
        pd.register(bytearray(4096))


@pytest.mark.rdma
def test_from_pyverbs_registers_into_the_pyverbs_pd(pins):
    from pyverbs.device import Context
    from pyverbs.pd import PD

    with Context(name=DEVICE) as ctx, PD(ctx) as vpd:
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        assert pd.device == DEVICE and pd.handle == vpd.handle
        with pd.register(bytearray(4096)) as mr:
            assert mr.lkey and mr.device == DEVICE
        pd.close()  # closes rdmapin's MRs, leaves the PD to pyverbs
        from pyverbs.mr import MR

        with MR(vpd, 4096, 1) as vmr:  # still allocated and usable: pyverbs owns it
            assert vmr.lkey


@pytest.mark.rdma
def test_from_pyverbs_wrong_type_bad_flow():
    with pytest.raises(rdmapin.BufferTypeError, match="pyverbs"):
        rdmapin.ProtectionDomain.from_pyverbs(object())
