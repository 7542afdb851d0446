"""rdmapin.rendezvous over real TCP on the host's loopback: endpoints swapped and checked,
steps out of order caught at once, a peer that hangs up or never comes named."""

from __future__ import annotations

import socket
import threading

import pytest

from rdmapin import RendezvousError, rendezvous
from rdmapin.rendezvous import Endpoint, RemoteMR

pytestmark = pytest.mark.pure

GID_A = "0000:0000:0000:0000:0000:ffff:c633:6401"
GID_B = "0000:0000:0000:0000:0000:ffff:c633:6402"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pair(port: int, b_side, *, connect_first: bool = False):
    """Run ``b_side(channel)`` on a thread connected to a channel served here."""
    out: dict = {}

    def run_b():
        try:
            with rendezvous.connect("127.0.0.1", port, timeout=10) as ch:
                out["b"] = b_side(ch)
        except Exception as e:  # handed to the test, which asserts on it
            out["b_error"] = e

    t = threading.Thread(target=run_b)
    t.start()
    ch = rendezvous.serve("127.0.0.1", port, timeout=10)
    return ch, t, out


def test_endpoints_cross():
    """b connects before a listens (it retries); each gets the other's endpoint."""
    port = free_port()
    ep_b = Endpoint(0x12, GID_B, psn=5, mrs={"dst": RemoteMR(0x7F0000001000, 0x1234, 4096)})
    ep_a = Endpoint(0x11, GID_A, mrs={"src": RemoteMR(0x1000, 0x99, 64 << 20)})
    ch, t, out = pair(port, lambda ch: ch.endpoint(ep_b))
    with ch:
        got = ch.endpoint(ep_a)
    t.join()
    assert got == ep_b and out["b"] == ep_a


def test_out_of_step_is_caught_and_the_message_kept():
    port = free_port()

    def b(ch):
        ch.send("end:test_x", {"outcome": "failed"})
        return ch.recv("end:test_x")

    ch, t, out = pair(port, b)
    with ch:
        with pytest.raises(RendezvousError, match=r"out of step.*waits for 'ready'.*"
                                                  r"sent 'end:test_x'"):
            ch.recv("ready", timeout=5)
        assert ch.exchange("end:test_x", {"outcome": "passed"}) == {"outcome": "failed"}
    t.join()
    assert out["b"] == {"outcome": "passed"}


def test_stale_steps_are_dropped():
    """What the peer said for a step this side never reached is dropped on request."""
    port = free_port()

    def b(ch):
        ch.send("step 3", "late")
        return ch.exchange("end", "b")

    ch, t, out = pair(port, b)
    with ch:
        with pytest.raises(RendezvousError, match="out of step"):
            ch.recv("end", timeout=5)
        assert ch.drop_stale() == {"step 3": "late"}
        assert ch.exchange("end", "a") == "b"
        with pytest.raises(RendezvousError, match="waited for 'step 3'"):  # b hung up
            ch.recv("step 3", timeout=0.2)
    t.join()
    assert out["b"] == "a"


def test_peer_hanging_up_and_silence():
    port = free_port()
    ch, t, _ = pair(port, lambda ch: None)
    t.join()
    with ch, pytest.raises(RendezvousError, match=r"closed the connection.*waited for 'qp'"):
        ch.recv("qp", timeout=5)
    port = free_port()
    release = threading.Event()
    ch, t, _ = pair(port, lambda ch: release.wait(10))
    with ch, pytest.raises(RendezvousError, match=r"no 'qp' from .* within 0.3 s"):
        ch.recv("qp", timeout=0.3)
    release.set()
    t.join()


def test_no_peer():
    port = free_port()
    with pytest.raises(RendezvousError, match=r"no peer listening on 127\.0\.0\.1"):
        rendezvous.connect("127.0.0.1", port, timeout=0.5)
    with pytest.raises(RendezvousError, match=r"no peer connected to 127\.0\.0\.1"):
        rendezvous.serve("127.0.0.1", port, timeout=0.3)


@pytest.mark.parametrize("bad, why", [
    ({"qp_num": 1}, "malformed endpoint"),
    ({"qp_num": "x", "gid": GID_A, "mrs": {}}, "malformed endpoint"),
    ({"qp_num": 0, "gid": GID_A, "mrs": {}}, "outside 24 bits"),
    ({"qp_num": 1 << 24, "gid": GID_A, "mrs": {}}, "outside 24 bits"),
    ({"qp_num": 5, "gid": "fe80::1", "mrs": {}}, "not 8 groups"),
    ({"qp_num": 5, "gid": GID_A, "mrs": {"x": [1, 2]}}, "malformed endpoint"),
])
def test_malformed_endpoints_are_refused(bad, why):
    with pytest.raises(RendezvousError, match=why):
        Endpoint.from_json(bad)
