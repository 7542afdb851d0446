"""Proof it is real: RDMA WRITE and READ over an RC loopback pair move bytes between
rdmapin-registered numpy arrays (4K, THP and 2M hugetlb backed), in a pyverbs PD."""

from __future__ import annotations

import numpy as np
import pytest
from verbs_util import DEVICE

import rdmapin
from rdmapin import Access
from rdmapin.kernel import procfs

pytest_plugins = ("verbs_fixtures",)

RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
SHAPE = (512, 1024)  # 2 MiB of float32


@pytest.mark.rdma
@pytest.mark.vm
@pytest.mark.parametrize("pages", ["4k", "thp", "2m"])
def test_write_and_read_between_rdmapin_arrays(pins, pages):
    from loopback import LoopbackPair
    from pyverbs.device import Context
    from pyverbs.pd import PD

    src = rdmapin.empty(SHAPE, "float32", pages=pages)
    dst = rdmapin.empty(SHAPE, "float32", pages=pages)
    back = rdmapin.empty(SHAPE, "float32", pages=pages)
    assert src.pages == pages and src.backing in (pages, "thp-partial", "4k")
    src[:] = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32)
    dst[:] = 0
    back[:] = 0
    n = src.nbytes
    with Context(name=DEVICE) as ctx, PD(ctx) as vpd:
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        pair = LoopbackPair(ctx, vpd)
        try:
            with pd.register(src, RW) as s, pd.register(dst, RW) as d, \
                    pd.register(back, RW) as b:
                assert procfs.vm_pin() - pins[0] == 3 * n
                pair.write(s.addr, n, s.lkey, d.addr, d.rkey)
                assert np.array_equal(src, dst)
                pair.read(b.addr, n, b.lkey, d.addr, d.rkey)
                assert np.array_equal(back, src)
        finally:
            pair.close()
            pd.close()
    assert procfs.vm_pin() == pins[0]
