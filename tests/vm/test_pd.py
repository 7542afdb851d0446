"""Protection domains: allocation, ordered teardown with live MRs, pyverbs interop."""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import threading
import time

import pytest
from verbs_util import DEVICE, rdma_res

import rdmapin
from rdmapin import _lib, registry
from rdmapin.kernel import procfs

pytest_plugins = ("verbs_fixtures",)


def my_pds() -> int:
    return sum(1 for r in rdma_res("pd") if r.get("pid") == os.getpid()
               and r.get("ifname") == DEVICE)


_ibv = ctypes.CDLL("libibverbs.so.1", use_errno=True)
_ibv.ibv_reg_mr.restype = ctypes.c_void_p
_ibv.ibv_reg_mr.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_ibv.ibv_dereg_mr.argtypes = [ctypes.c_void_p]


def reg_mr_past_the_shim(pd: rdmapin.ProtectionDomain, buf: rdmapin.Buffer) -> int:
    """ibv_reg_mr on ``pd``'s ibv_pd by libibverbs itself, off the shim's MR list: rdmapin
    cannot close it, so the PD's ibv_dealloc_pd fails (EBUSY) until dereg_mr_past_the_shim.
    Real verbs: what makes a PD's close fail on rxe."""
    mr = _ibv.ibv_reg_mr(_lib.address_of(pd._handle().pd), buf.addr, buf.nbytes, 1)
    assert mr, os.strerror(ctypes.get_errno())
    return mr


def dereg_mr_past_the_shim(mr: int) -> None:
    assert _ibv.ibv_dereg_mr(mr) == 0


@pytest.mark.rdma
def test_pd_alloc_and_close_are_what_the_kernel_tracks(dev):
    before = my_pds()
    p = dev.alloc_pd()
    assert my_pds() == before + 1
    assert p.device == DEVICE and p.handle >= 0
    p.close()
    assert my_pds() == before


@pytest.mark.rdma
def test_repr_shows_the_device_the_state_and_the_live_mrs(dev, pins):
    pd = dev.alloc_pd()
    assert repr(pd) == f"<ProtectionDomain {DEVICE} handle={pd.handle} open, 0 MRs>"
    mrs = [pd.register(bytearray(4096)) for _ in range(2)]
    assert repr(pd).endswith(" open, 2 MRs>")
    mrs[0].close()
    assert repr(pd).endswith(" open, 1 MR>")
    pd.close()
    assert repr(pd) == f"<ProtectionDomain {DEVICE} closed>"


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
def test_pd_whose_dealloc_fails_stays_open_and_closes_on_retry_bad_flow(dev, pins):
    """ibv_dealloc_pd refuses (EBUSY): the PD's own MRs are closed, the PD is not forgotten
    (still allocated, still usable), and a second close finishes the job."""
    before = my_pds()
    pd = dev.alloc_pd()
    buf = rdmapin.alloc(4096)
    mine = pd.register(rdmapin.alloc(8192))
    foreign = reg_mr_past_the_shim(pd, buf)
    with pytest.raises(OSError) as ei:
        pd.close()
    assert ei.value.errno == errno.EBUSY and "ibv_dealloc_pd" in str(ei.value)
    assert mine.closed and not pd.closed and my_pds() == before + 1
    assert repr(pd).endswith(" open, 0 MRs>")
    with pd.register(bytearray(4096)) as mr:  # open, so it takes new MRs again
        assert [r.lkey for r in pd.mrs] == [mr.lkey]
    dereg_mr_past_the_shim(foreign)
    pd.close()
    assert pd.closed and my_pds() == before
    pd.close()


@pytest.mark.rdma
def test_device_whose_pd_fails_to_close_keeps_its_context_bad_flow(pins):
    """Device.close closes its PDs first; when one cannot be closed the device stays open
    (its context neither closed nor forgotten), and closing again once it can finishes."""
    before = my_pds()
    d = rdmapin.open_device(DEVICE)
    pd = d.alloc_pd()
    buf = rdmapin.alloc(4096)
    foreign = reg_mr_past_the_shim(pd, buf)
    with pytest.raises(OSError) as ei:
        d.close()
    assert ei.value.errno == errno.EBUSY
    assert not d.closed and not pd.closed and d.pds == [pd]
    assert d.port(1).state == "ACTIVE"  # the context still answers
    dereg_mr_past_the_shim(foreign)
    d.close()
    assert d.closed and pd.closed and d.pds == [] and my_pds() == before


@pytest.mark.rdma
def test_gc_of_pd_deallocates_it(dev, pins):
    before = my_pds()
    pd = dev.alloc_pd()
    mr = pd.register(bytearray(4096))
    del pd, mr
    gc.collect()
    assert not dev.pds
    assert my_pds() == before
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
def test_from_pyverbs_reads_the_pd_property_only_where_pyverbs_says_it_is_v59(monkeypatch,
                                                                              pins):
    """pyverbs v59+ returns PD.pd as the ibv_pd address; before (Debian 12: v44) reading it
    crashes, and no release says its version. So rdmapin reads it only where
    pyverbs.__version__ says 59 or later, checks it, and scans otherwise."""
    import pyverbs
    from pyverbs.device import Context
    from pyverbs.pd import PD

    from rdmapin import _pyverbs_compat

    class PD59(PD):  # PD.pd as v59 returns it
        address = 0
        reads = 0

        @property
        def pd(self):
            self.reads += 1
            return self.address

    with Context(name=DEVICE) as ctx, PD59(ctx) as vpd:
        monkeypatch.delattr(pyverbs, "__version__", raising=False)
        found = _pyverbs_compat.pd_address(vpd)  # the scan
        assert vpd.reads == 0
        monkeypatch.setattr(pyverbs, "__version__", "59.0", raising=False)
        vpd.address = found
        assert _pyverbs_compat.pd_address(vpd) == found and vpd.reads == 1
        vpd.address = id(vpd)  # not an ibv_pd with this handle: the scan decides
        assert _pyverbs_compat.pd_address(vpd) == found and vpd.reads == 2
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        assert pd.handle == vpd.handle and repr(pd).startswith(
            f"<ProtectionDomain {DEVICE} from pyverbs handle={vpd.handle} open")
        pd.close()


@pytest.mark.rdma
def test_from_pyverbs_wrong_type_bad_flow():
    with pytest.raises(rdmapin.BufferTypeError, match="pyverbs"):
        rdmapin.ProtectionDomain.from_pyverbs(object())
