"""Fixtures of the two-host tests: one control channel between the pytest sessions of guests
a and b (rdmapin.rendezvous over pair0), and a barrier around every test.

Both guests run the same test files in the same order. ``peer`` meets the other side at the
start of each test (by its node id) and again at its end. A side whose test failed goes to
that end barrier at once, so its peer, waiting for a step that will never come, gets the end
message instead and fails with "out of step" rather than timing out; what either side said
for steps the other never reached is dropped there, and the next test starts in step.
"""

from __future__ import annotations

import pytest
from pair_util import PEER, ROLE, SELF

from rdmapin import RendezvousError, rendezvous

# The peer guest may boot a minute later (TCG, shared cores), and b compiles its tracer
# before it connects.
CONNECT_S = 600.0
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
def _tracer_started(request):
    """b's tracer, started before the first test when a selected test needs kprobes.

    Not on a thread beside the tests: bcc's compile reads hundreds of kernel headers from the
    guest's 9p root, and on 6.12 each such read pins the reader's pages (FOLL_PIN) while it is
    in flight. Measured in a 6.12 guest: 165 of 4,448 samples of the system-wide count taken
    during a 35 s compile were off by up to 24 pages, which is how the `pins` checks of the
    tests that overlapped it failed (test_link_down_mid_transfer's teardown, 0 -> 1).
    """
    if ROLE != "b" or not any(item.get_closest_marker("kprobes")
                              for item in request.session.items):
        yield None
        return
    from rdmapin.trace import Tracer

    try:
        tracer = Tracer().start()
    except Exception as e:  # handed to the test that asks for it
        yield e
        return
    yield tracer
    tracer.stop()


@pytest.fixture
def tracer(_tracer_started):
    """b's running tracer (None on a); its events from before the test are the caller's to
    skip (Tracer.events() lists all since the session's start)."""
    if isinstance(_tracer_started, Exception):
        raise _tracer_started
    return _tracer_started
