"""Two hosts, one wire: an RC QP from guest a's rxe2 to guest b's moves bytes between
rdmapin-registered numpy arrays of each backing (4k, THP, 2 MiB hugetlb) by RDMA WRITE, RDMA
READ and SEND/RECV, 1 KiB to 64 MiB, each transfer checksummed on the side that received it
and compared with the sender's checksum. VmPin is exactly the MR while it lives, on both.

Every operation moves 1 KiB, 37 KiB + 5 B (ending mid-page) and 1 MiB on every backing; the
64 MiB transfer, seconds under TCG, is one operation per backing, each operation on one of
them (WRITE on 4k, READ on THP, SEND on hugetlb), so each backing and each operation moves
64 MiB once.

Runs in ci/vm/pair (both guests run this file; RDMAPIN_ROLE says which half)."""

from __future__ import annotations

import pytest
from pair_util import DEVICE, ROLE, RcQp, crc, pattern

import rdmapin
from rdmapin import Access
from rdmapin.kernel import procfs

pytest_plugins = ("verbs_fixtures", "pair_fixtures")
pytestmark = [pytest.mark.pair, pytest.mark.rdma]

RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
SIZE = 64 << 20
SIZES = [1 << 10, (37 << 10) + 5, 1 << 20]
BIG = {"4k": "write", "thp": "read", "2m": "send"}  # the operation that moves SIZE


def sizes(op: str, pages: str) -> list[int]:
    return [*SIZES, SIZE] if BIG[pages] == op else SIZES


@pytest.mark.parametrize("pages", ["4k", "thp", "2m"])
def test_write_read_send_between_hosts(peer, pins, pages):
    from pyverbs.device import Context
    from pyverbs.pd import PD

    buf = rdmapin.empty(SIZE, "uint8", pages=pages)
    with Context(name=DEVICE) as ctx, PD(ctx) as vpd:
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        qp = RcQp(ctx, vpd)
        try:
            with pd.register(buf, RW) as mr:
                assert procfs.vm_pin() - pins[0] == SIZE
                there = peer.endpoint(qp.endpoint(buf=mr))
                qp.connect(there)
                peer.exchange("connected")
                remote = there.mrs["buf"]
                side = _a_side if ROLE == "a" else _b_side
                for op in ("write", "read", "send"):
                    for n in sizes(op, pages):
                        side[op](peer, qp, buf, mr, remote, n)
        finally:
            qp.close()
            pd.close()
    assert procfs.vm_pin() == pins[0]


def _a_write(peer, qp, buf, mr, remote, n):
    """a is the requester of every operation; b checks what arrived."""
    sent = pattern(buf, seed=n, n=n)
    qp.write(mr, 0, n, remote)
    qp.wait()
    peer.send(f"write {n}", sent)
    assert peer.recv(f"write {n}") == sent, f"RDMA WRITE of {n} B: b's bytes differ"


def _a_read(peer, qp, buf, mr, remote, n):
    theirs = peer.recv(f"read {n}")  # b filled its MR; its checksum
    buf[:n] = 0
    qp.read(mr, 0, n, remote)
    qp.wait()
    got = crc(buf, n)
    peer.send(f"read {n}", got)
    assert got == theirs, f"RDMA READ of {n} B: a's bytes differ from b's"


def _a_send(peer, qp, buf, mr, remote, n):
    peer.recv(f"recv posted {n}")
    sent = pattern(buf, seed=n + 2, n=n)
    qp.send(mr, 0, n)
    qp.wait()
    peer.send(f"send {n}", sent)
    assert peer.recv(f"send {n}") == sent, f"SEND of {n} B: b's bytes differ"


def _b_write(peer, qp, buf, mr, remote, n):
    want = peer.recv(f"write {n}")
    got = crc(buf, n)
    peer.send(f"write {n}", got)
    assert got == want, f"RDMA WRITE of {n} B: bytes differ from a's"


def _b_read(peer, qp, buf, mr, remote, n):
    mine = pattern(buf, seed=n + 1, n=n)
    peer.send(f"read {n}", mine)
    assert peer.recv(f"read {n}") == mine, f"RDMA READ of {n} B: a read other bytes"


def _b_send(peer, qp, buf, mr, remote, n):
    buf[:n] = 0
    qp.recv(mr, 0, n)
    peer.send(f"recv posted {n}", None)
    wc = qp.wait()
    assert wc.byte_len == n
    want = peer.recv(f"send {n}")
    got = crc(buf, n)
    peer.send(f"send {n}", got)
    assert got == want, f"SEND of {n} B: bytes differ from a's"


_a_side = {"write": _a_write, "read": _a_read, "send": _a_send}
_b_side = {"write": _b_write, "read": _b_read, "send": _b_send}
