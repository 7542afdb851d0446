"""pytest plugin: free what a failed test's frames still hold before the next test runs.

pytest keeps the last failure in sys.last_traceback (for post-mortem debugging), and its
call/report objects keep the traceback, whose frames hold the test's locals: a failed
test_trace_compaction kept its 512 MiB node-0 buffer mapped, and the next 512 MiB got the
guest's pytest OOM-killed (CI, stop 7). Once the report is made (its text already
formatted), the traceback's frames and their locals snapshots are cleared; under --pdb they
are kept for the debugger.
"""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Generator

import pytest

_failed = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator:
    global _failed
    yield
    if call.excinfo is None or item.config.getoption("usepdb", False):
        return
    _failed = True
    traceback.clear_frames(call.excinfo.tb)
    # CPython 3.11's frame.clear() leaves the f_locals snapshot pytest's formatting made
    # (the test's buffers still in it); reading f_locals again syncs the cleared frame into
    # that dict, which drops them.
    tb = call.excinfo.tb
    while tb is not None:
        tb.tb_frame.f_locals  # noqa: B018
        tb = tb.tb_next


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _failed
    if not _failed:
        return
    _failed = False
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
    gc.collect()
