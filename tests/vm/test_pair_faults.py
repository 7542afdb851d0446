"""Faults between two hosts, each on its own: b's link goes down in the middle of a's RDMA
WRITEs; b's target process is killed with SIGKILL in the middle of them. The survivor (a)
gets RETRY_EXC_ERR, which explain_wc names, within FAULT_BOUND_S of posting its last request
(pair_util: the QP's retry budget, 7 * 537 ms = 3.8 s, plus 5 s of TCG slack), closes its
QP, MR and PD without error, and VmPin and the system's FOLL_PIN count return to their
baselines on both hosts (b's after the link is back, or after the kernel has cleaned up the
killed process's MR).

Each side writes its measured times to RESULTS/faults-ROLE.json for the record.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pair_util import (
    DEVICE,
    FAULT_BOUND_S,
    LINK,
    PORT,
    RETRY_S,
    ROLE,
    RcQp,
    pattern,
)

import rdmapin
from rdmapin import Access
from rdmapin.kernel import procfs
from rdmapin.rendezvous import Endpoint

pytest_plugins = ("verbs_fixtures", "pair_fixtures")
pytestmark = [pytest.mark.pair, pytest.mark.rdma]

SIZE = 16 << 20
CHUNK = 256 << 10  # one request: ~0.1 s on the wire under TCG, short next to the bound
WRITE_LIMIT_S = 120.0  # a run of writes that never fails is a failed test
RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE
TARGET = Path(__file__).with_name("pair_target.py")


def record(name: str, **facts: float) -> None:
    path = Path(os.environ.get("RDMAPIN_RESULTS", ".")) / f"faults-{ROLE}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old[name] = facts
    path.write_text(json.dumps(old, indent=1))


def write_until_error(qp: RcQp, mr, remote) -> tuple[rdmapin.WorkCompletionError, float, int]:
    """RDMA WRITE CHUNK after CHUNK (each awaited) until one fails: (its error, seconds from
    posting it to its completion, writes that succeeded)."""
    deadline = time.monotonic() + WRITE_LIMIT_S
    done = 0
    while time.monotonic() < deadline:
        off = done * CHUNK % SIZE
        posted = time.monotonic()
        qp.write(mr, off, CHUNK, remote, off)
        try:
            qp.wait(timeout=FAULT_BOUND_S + 60)
        except rdmapin.WorkCompletionError as err:
            return err, time.monotonic() - posted, done
        done += 1
    pytest.fail(f"{done} writes in {WRITE_LIMIT_S:.0f} s and none failed")


def assert_survived(err: rdmapin.WorkCompletionError, waited: float) -> None:
    assert err.status_name == "RETRY_EXC_ERR", err
    assert "peer is gone" in str(err) and "link" in str(err)
    assert waited <= FAULT_BOUND_S, (
        f"RETRY_EXC_ERR {waited:.1f} s after the request, bound {FAULT_BOUND_S:.1f} s")
    # It cannot come sooner than the retry budget after the last answered request either.
    assert waited >= RETRY_S * 0.9, f"{waited:.2f} s, retry budget {RETRY_S:.2f} s"


def _wait_port(state_wanted: str, timeout: float = 30.0) -> float:
    """Seconds until rxe2's port 1 reaches the state (pyverbs query_port) with a GID 1."""
    import pyverbs.enums as e
    from pyverbs.device import Context

    want = {"ACTIVE": e.IBV_PORT_ACTIVE, "DOWN": e.IBV_PORT_DOWN}[state_wanted]
    t0 = time.monotonic()
    with Context(name=DEVICE) as ctx:
        while time.monotonic() - t0 < timeout:
            if ctx.query_port(PORT).state == want and (
                    state_wanted == "DOWN" or int(ctx.query_gid(PORT, 1).gid[-4:], 16)):
                return time.monotonic() - t0
            time.sleep(0.1)
    pytest.fail(f"{DEVICE} port {PORT} not {state_wanted} within {timeout} s", pytrace=False)


def _link(state: str) -> None:
    subprocess.run(["ip", "link", "set", LINK, state], check=True)


@contextlib.contextmanager
def connected(peer, seed: int) -> Iterator[tuple[RcQp, rdmapin.MemoryRegion, Endpoint]]:
    """An RC QP on rxe2 connected to the peer's, a registered SIZE buffer of a pattern, and
    the peer's endpoint; the QP and PD closed on the way out."""
    from pyverbs.device import Context
    from pyverbs.pd import PD

    buf = rdmapin.empty(SIZE, "uint8")
    pattern(buf, seed=seed)
    with Context(name=DEVICE) as ctx, PD(ctx) as vpd:
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        qp = RcQp(ctx, vpd)
        try:
            mr = pd.register(buf, RW)
            there = peer.endpoint(qp.endpoint(buf=mr))
            qp.connect(there)
            peer.exchange("connected")
            yield qp, mr, there
        finally:
            qp.close()
            pd.close()


def test_link_down_mid_transfer(peer, pins):
    with connected(peer, seed=7) as (qp, mr, there):
        try:
            if ROLE == "a":
                peer.send("writing", None)
                err, waited, done = write_until_error(qp, mr, there.mrs["buf"])
                qp.close()
                mr.close()
                record("link_down", waited_s=waited, writes_before=done,
                       bound_s=FAULT_BOUND_S)
                assert_survived(err, waited)
                assert done > 0, "no write went through before the link went down"
                peer.recv("link up", timeout=120)
            else:
                peer.recv("writing")
                time.sleep(1.0)  # a's writes are flowing
                _link("down")
                down_at = time.monotonic()
                _wait_port("DOWN")
                # Keep it down until a must have given up, then close while it is still down.
                time.sleep(max(0.0, FAULT_BOUND_S + 2 - (time.monotonic() - down_at)))
                qp.close()
                mr.close()
                _link("up")
                back = _wait_port("ACTIVE")
                record("link_down", down_s=time.monotonic() - down_at, port_active_s=back)
                peer.send("link up", None)
        finally:  # the link back up before the QP and PD close, on every way out
            if ROLE == "b":
                _link("up")
    assert procfs.vm_pin() == pins[0]


def test_peer_killed_mid_transfer(peer, pins):
    if ROLE == "a":
        _survivor(peer)
    else:
        _victim_host(peer, pins[1])


def _survivor(peer) -> None:
    with connected(peer, seed=9) as (qp, mr, there):
        peer.send("writing", None)
        err, waited, done = write_until_error(qp, mr, there.mrs["buf"])
        record("peer_killed", waited_s=waited, writes_before=done, bound_s=FAULT_BOUND_S)
        assert_survived(err, waited)
        assert done > 0, "no write went through before the kill"
        theirs = peer.recv("killed", timeout=120)
        assert theirs["foll_pins_back"], theirs


def _victim_host(peer, foll_baseline: int) -> None:
    """The target is a child process of b's test; killing it leaves its MR and QP to the
    kernel's cleanup of its uverbs file."""
    child = subprocess.Popen([sys.executable, str(TARGET), str(SIZE)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        mine = Endpoint.from_json(json.loads(child.stdout.readline()))
        theirs = peer.endpoint(mine)
        child.stdin.write(json.dumps(theirs.to_json()) + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        assert procfs.foll_pins() - foll_baseline == SIZE // 4096
        peer.exchange("connected")
        peer.recv("writing")
        time.sleep(1.0)
        child.send_signal(signal.SIGKILL)
        child.wait()
        back = procfs.foll_pins() == foll_baseline
        record("peer_killed", foll_pins_back_at_reap=float(back))
        peer.send("killed", {"foll_pins_back": back})
        assert back, "the killed process's MR stayed pinned after it was reaped"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
