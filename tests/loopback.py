"""An RC QP pair on one rxe device, peer GID = its own (rxe's loopback path).

Two rxe devices in one network namespace cannot reach each other (both addresses are local,
so to_rtr times out), but a QP pair on one device moves real bytes through real MRs. Built with
pyverbs; the MRs may be pyverbs' or rdmapin's in the same PD.
"""

from __future__ import annotations

import time

import pyverbs.enums as e
from pyverbs.addr import AHAttr, GlobalRoute
from pyverbs.cq import CQ
from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
from pyverbs.wr import SGE, SendWR

GID_INDEX = 1  # the IPv4-mapped GID guest-init waits for
PORT = 1


class LoopbackPair:
    """Two connected RC QPs on ``pd``'s device; ``a`` posts, ``b`` is the target."""

    def __init__(self, ctx, pd, depth: int = 16) -> None:
        self.ctx = ctx
        self.cq = CQ(ctx, depth * 2)
        cap = QPCap(max_send_wr=depth, max_recv_wr=depth, max_send_sge=1, max_recv_sge=1)
        init = QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap)
        attr = QPAttr(port_num=PORT)
        attr.qp_access_flags = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
                                | e.IBV_ACCESS_REMOTE_READ)
        self.a = QP(pd, init, attr)
        self.b = QP(pd, init, attr)
        gid = ctx.query_gid(PORT, GID_INDEX)
        for qp, peer in ((self.a, self.b), (self.b, self.a)):
            rts = QPAttr(port_num=PORT)
            rts.ah_attr = AHAttr(gr=GlobalRoute(dgid=gid, sgid_index=GID_INDEX), is_global=1,
                                 port_num=PORT)
            rts.dest_qp_num = peer.qp_num
            rts.path_mtu = e.IBV_MTU_1024
            rts.max_dest_rd_atomic = 1
            rts.max_rd_atomic = 1
            rts.min_rnr_timer = 12
            rts.timeout = 14
            rts.retry_cnt = 7
            rts.rnr_retry = 7
            rts.rq_psn = 0
            rts.sq_psn = 0
            qp.to_rts(rts)

    def _post(self, opcode: int, local_addr: int, length: int, lkey: int, remote_addr: int,
              rkey: int) -> None:
        wr = SendWR(opcode=opcode, num_sge=1, sg=[SGE(local_addr, length, lkey)],
                    send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rkey, remote_addr)
        self.a.post_send(wr)
        self.wait()

    def write(self, local_addr: int, length: int, lkey: int, remote_addr: int,
              rkey: int) -> None:
        """RDMA WRITE local -> remote through the loopback pair; waits for the completion."""
        self._post(e.IBV_WR_RDMA_WRITE, local_addr, length, lkey, remote_addr, rkey)

    def read(self, local_addr: int, length: int, lkey: int, remote_addr: int,
             rkey: int) -> None:
        """RDMA READ remote -> local; waits for the completion."""
        self._post(e.IBV_WR_RDMA_READ, local_addr, length, lkey, remote_addr, rkey)

    def wait(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n, wcs = self.cq.poll()
            if n:
                wc = wcs[0]
                if wc.status != e.IBV_WC_SUCCESS:
                    raise AssertionError(f"work completion failed: status {wc.status}")
                return
        raise AssertionError(f"no completion within {timeout} s")

    def close(self) -> None:
        self.a.close()
        self.b.close()
        self.cq.close()
