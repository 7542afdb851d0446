"""A fork child never destroys its parent's PDs and MRs.

After fork() the child shares the parent's uverbs file, so an ibv_dereg_mr or ibv_dealloc_pd
it sends destroys the parent's object, for the parent. A Python child does that without
asking: closing what it inherited, or just exiting (its MemoryRegions are collected and
ffi.gc deregisters them). The shim knows the fork generation that made each PD and MR and,
in a child, only forgets them. Checked here from the outside: the kernel's MR list still
holds the parent's MR with its keys, VmPin and FOLL_PIN are unchanged, bytes still move
through the MR over a QP, and the parent's own close succeeds.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from verbs_util import DEVICE

import rdmapin
from rdmapin import Access
from rdmapin.kernel import procfs, rdma_res

pytest_plugins = ("verbs_fixtures",)
pytestmark = [pytest.mark.rdma]

RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
SIZE = 1 << 20


def in_child(body) -> int:
    """Run ``body`` in a fork child; its exit status (0 when body returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def listed(lkey: int) -> bool:
    return any(m.lkey == lkey for m in rdma_res.mrs(os.getpid()))


@pytest.mark.parametrize("how", ["close", "collect"])
def test_a_childs_close_or_exit_leaves_the_parents_pd_and_mr(pins, how):
    from loopback import LoopbackPair
    from pyverbs.device import Context
    from pyverbs.pd import PD

    src = rdmapin.empty(SIZE, "uint8")
    dst = rdmapin.empty(SIZE, "uint8")
    with Context(name=DEVICE) as ctx, PD(ctx) as vpd, rdmapin.open_device(DEVICE) as dev:
        own_pd = dev.alloc_pd()  # rdmapin's own: the child must not ibv_dealloc_pd it
        held = own_pd.register(rdmapin.empty(SIZE, "uint8"), RW)
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        pair = LoopbackPair(ctx, vpd)
        s, d = pd.register(src, RW), pd.register(dst, RW)
        keys = (s.lkey, d.lkey, held.lkey)
        before = (procfs.vm_pin(), procfs.foll_pins())

        def child() -> None:
            nonlocal s, d, held
            if how == "close":
                for mr in (s, d, held):
                    mr.close()
                own_pd.close()
                dev.close()
            else:  # what a plain exit does: the MRs are collected, ffi.gc frees them
                s = d = held = None
                gc.collect()

        assert in_child(child) == 0
        assert all(listed(k) for k in keys), (keys, rdma_res.mrs(os.getpid()))
        assert (procfs.vm_pin(), procfs.foll_pins()) == before
        assert not s.closed and not held.closed
        src[:] = np.random.default_rng(1).integers(0, 256, SIZE, dtype=np.uint8)
        pair.write(s.addr, SIZE, s.lkey, d.addr, d.rkey)
        assert np.array_equal(src, dst)
        pair.close()
        s.close()
        d.close()
        own_pd.close()  # deregisters held, then ibv_dealloc_pd: both still the parent's
        pd.close()
    assert not any(listed(k) for k in keys)
