"""pytest plugin: free what a failed test's frames still hold before the next test runs.

pytest keeps the last failure in sys.last_traceback (for post-mortem debugging), and its
call/report objects form reference cycles that only a full collection frees. Their frames hold
the test's locals: a failed test_trace_compaction attempt kept its 512 MiB node-0 buffer
mapped, and the rerun's second 512 MiB got the guest's pytest OOM-killed (CI, stop 7).
"""

from __future__ import annotations

import gc
import sys

import pytest

_failed = False


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _failed
    _failed = _failed or report.outcome in ("failed", "rerun")


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
