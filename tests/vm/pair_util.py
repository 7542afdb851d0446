"""Pieces of the two-host tests (guests a and b of ci/vm/pair): the role, an RC QP on rxe2 to
the peer's, data patterns checksummed on both ends, and the QP timing chosen for TCG.

QP timing. Two TCG guests share two cores (four vCPUs, and other guests on a busy machine),
so an ACK can be late by hundreds of milliseconds without anything being wrong; a dead peer
must still be noticed soon. The QPs use timeout 17 (local ACK timeout 4.096 us * 2**17 =
537 ms) and retry_cnt 6: a requester whose peer or link is gone completes with RETRY_EXC_ERR
after 7 * 537 ms = 3.8 s without an ACK (rdmapin.wc.retry_bound_s). Not 7: rxe retries
forever at 7 (rxe_comp.c decrements retry_cnt only when it is not 7; measured: no completion
in 67 s with the link down). rnr_retry 7 retries forever (receives are posted before the peer
is told to send). FAULT_BOUND_S is what the fault tests allow from posting the request that
fails to its error: that budget plus TCG's scheduling slack (SLACK_S), within which rxe's
jiffy-rounded timer and the request's own transfer time (256 KiB) also fall.
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Any

import numpy as np

from rdmapin import explain_wc
from rdmapin.rendezvous import Endpoint, RemoteMR
from rdmapin.wc import retry_bound_s

ROLE = os.environ.get("RDMAPIN_ROLE", "")
SELF = os.environ.get("RDMAPIN_SELF", "")
PEER = os.environ.get("RDMAPIN_PEER", "")
DEVICE = "rxe2"
PORT = 1
GID_INDEX = 1  # the IPv4-mapped GID guest-init waits for
LINK = "pair0"

QP_TIMEOUT = 17
RETRY_CNT = 6
RNR_RETRY = 7
RETRY_S = retry_bound_s(QP_TIMEOUT, RETRY_CNT)
SLACK_S = 5.0
FAULT_BOUND_S = RETRY_S + SLACK_S

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def pattern(buf: np.ndarray, seed: int, n: int | None = None) -> int:
    """Fill the first ``n`` bytes of ``buf`` with a pattern unique to (seed, offset) and
    return their CRC-32: a page landing in the wrong place, or stale, changes it."""
    n = len(buf) if n is None else n
    words = n // 8
    view = buf[:words * 8].view(np.uint64)
    np.multiply(np.arange(words, dtype=np.uint64) + np.uint64(seed), _GOLDEN, out=view)
    buf[words * 8:n] = seed & 0xFF
    return crc(buf, n)


def crc(buf: np.ndarray, n: int | None = None) -> int:
    return zlib.crc32(memoryview(buf)[: len(buf) if n is None else n])


class RcQp:
    """One RC QP on rxe2 in a pyverbs PD, connected to the peer's QP from an Endpoint."""

    def __init__(self, ctx: Any, vpd: Any, depth: int = 64) -> None:
        import pyverbs.enums as e
        from pyverbs.cq import CQ
        from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr

        self.e = e
        self.ctx = ctx
        self.cq = CQ(ctx, depth * 2)
        cap = QPCap(max_send_wr=depth, max_recv_wr=depth, max_send_sge=1, max_recv_sge=1)
        init = QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap)
        attr = QPAttr(port_num=PORT)
        attr.qp_access_flags = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
                                | e.IBV_ACCESS_REMOTE_READ)
        self.qp = QP(vpd, init, attr)
        self.posted = 0

    def endpoint(self, **mrs: Any) -> Endpoint:
        """This QP and the given rdmapin MRs, for the peer (rendezvous Channel.endpoint)."""
        gid = self.ctx.query_gid(PORT, GID_INDEX).gid
        return Endpoint(self.qp.qp_num, gid, 0, {k: RemoteMR.of(m) for k, m in mrs.items()})

    def connect(self, peer: Endpoint) -> None:
        from pyverbs.addr import GID, AHAttr, GlobalRoute
        from pyverbs.qp import QPAttr

        e = self.e
        rts = QPAttr(port_num=PORT)
        rts.ah_attr = AHAttr(gr=GlobalRoute(dgid=GID(peer.gid), sgid_index=GID_INDEX),
                             is_global=1, port_num=PORT)
        rts.dest_qp_num = peer.qp_num
        rts.path_mtu = e.IBV_MTU_1024  # pair0's 1500-byte MTU
        rts.max_dest_rd_atomic = 1
        rts.max_rd_atomic = 1
        rts.min_rnr_timer = 12
        rts.timeout = QP_TIMEOUT
        rts.retry_cnt = RETRY_CNT
        rts.rnr_retry = RNR_RETRY
        rts.rq_psn = peer.psn
        rts.sq_psn = 0
        self.qp.to_rts(rts)

    def _send(self, opcode: int, mr: Any, off: int, n: int, remote: RemoteMR | None = None,
              roff: int = 0) -> None:
        from pyverbs.wr import SGE, SendWR

        self.posted += 1
        wr = SendWR(wr_id=self.posted, opcode=opcode, num_sge=1,
                    sg=[SGE(mr.addr + off, n, mr.lkey)], send_flags=self.e.IBV_SEND_SIGNALED)
        if remote is not None:
            assert roff + n <= remote.length
            wr.set_wr_rdma(remote.rkey, remote.addr + roff)
        self.qp.post_send(wr)

    def write(self, mr: Any, off: int, n: int, remote: RemoteMR, roff: int = 0) -> None:
        self._send(self.e.IBV_WR_RDMA_WRITE, mr, off, n, remote, roff)

    def read(self, mr: Any, off: int, n: int, remote: RemoteMR, roff: int = 0) -> None:
        self._send(self.e.IBV_WR_RDMA_READ, mr, off, n, remote, roff)

    def send(self, mr: Any, off: int, n: int) -> None:
        self._send(self.e.IBV_WR_SEND, mr, off, n)

    def recv(self, mr: Any, off: int, n: int) -> None:
        from pyverbs.wr import SGE, RecvWR

        self.posted += 1
        self.qp.post_recv(RecvWR(wr_id=self.posted, num_sge=1,
                                 sg=[SGE(mr.addr + off, n, mr.lkey)]))

    def wait(self, timeout: float = 60.0, *, spin: bool = False) -> Any:
        """The next completion; a failed one raises rdmapin.explain_wc's error (its
        ``wc`` attribute is the pyverbs WC). Between empty polls it sleeps 1 ms, leaving
        the vCPU to rxe's own work, unless ``spin`` (latency measurements)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n, wcs = self.cq.poll()
            if not n:
                if not spin:
                    time.sleep(0.001)
                continue
            if n:
                wc = wcs[0]
                if wc.status != self.e.IBV_WC_SUCCESS:
                    err = explain_wc(wc.status, wc.vendor_err, qp_num=wc.qp_num,
                                     wr_id=wc.wr_id)
                    err.wc = wc
                    raise err
                return wc
        raise AssertionError(f"no completion on {DEVICE} within {timeout} s")

    def close(self) -> None:
        self.qp.close()
        self.cq.close()
