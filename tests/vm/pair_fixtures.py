"""Fixtures of the two-host tests: one control channel between the pytest sessions of guests
a and b (rdmapin.rendezvous over pair0), and a barrier around every test.

Both guests run the same test files in the same order. ``peer`` meets the other side at the
start of each test (by its node id) and again at its end. A side whose test failed goes to
that end barrier at once, so its peer, waiting for a step that will never come, gets the end
message instead and fails with "out of step" rather than timing out; what either side said
for steps the other never reached is dropped there, and the next test starts in step.
"""

from __future__ import annotations

import threading

import pytest
from pair_util import PEER, ROLE, SELF

from rdmapin import RendezvousError, rendezvous

# The peer guest may boot a minute later (TCG, shared cores) and a step may wait for the
# peer's tracer to compile.
CONNECT_S = 600.0
COMPILE_S = 900.0
BEGIN_S = 300.0
END_S = 600.0


@pytest.fixture(scope="session")
def channel():
    if ROLE == "a":
        ch = rendezvous.serve(SELF, timeout=CONNECT_S)
    elif ROLE == "b":
        ch = rendezvous.connect(PEER, timeout=CONNECT_S)
    else:
        pytest.fail("not in a ci/vm/pair guest (RDMAPIN_ROLE is neither a nor b)",
                    pytrace=False)
    with ch:
        yield ch


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def peer(request, channel):
    """The control channel, after both sides began this test."""
    test = request.node.nodeid
    channel.exchange(f"begin:{test}", ROLE, timeout=BEGIN_S)
    yield channel
    rep = getattr(request.node, "rep_call", None)
    outcome = "passed" if rep is not None and rep.passed else "failed"
    channel.send(f"end:{test}", outcome)
    while True:  # what the peer said for steps this side never reached is stale now
        try:
            channel.recv(f"end:{test}", timeout=END_S)
            return
        except RendezvousError as e:
            if "out of step" not in str(e):
                raise
            channel.drop_stale()


@pytest.fixture(scope="session", autouse=True)
def _tracer_compiling(request):
    """b's tracer, started on a thread at the session's start when a selected test needs
    kprobes: its bcc compile (minutes under TCG) overlaps the tests before it."""
    if ROLE != "b" or not any(item.get_closest_marker("kprobes")
                              for item in request.session.items):
        yield None
        return
    from rdmapin.trace import Tracer

    box: dict = {}

    def start() -> None:
        try:
            box["tracer"] = Tracer().start()
        except BaseException as e:  # handed to the test that asks for it
            box["error"] = e

    thread = threading.Thread(target=start, name="tracer-compile", daemon=True)
    thread.start()
    yield thread, box
    thread.join(COMPILE_S)
    if "tracer" in box:
        box["tracer"].stop()


@pytest.fixture
def tracer(_tracer_compiling):
    """b's running tracer (None on a); its events from before the test are the caller's to
    skip (Tracer.events() lists all since the session's start)."""
    if _tracer_compiling is None:
        return None
    thread, box = _tracer_compiling
    thread.join(COMPILE_S)
    if thread.is_alive():
        pytest.fail(f"the tracer did not start within {COMPILE_S:.0f} s", pytrace=False)
    if "error" in box:
        raise box["error"]
    return box["tracer"]
