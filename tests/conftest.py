"""Markers say what a test needs; in the VM (RDMAPIN_STRICT=1) a missing need is a failure.

rdma     an RDMA device (rxe0/rxe1 in the VM)
kprobes  kprobe/kretprobe attach and kernel headers for bcc
vm       the guest's environment: NUMA node 1 and reserved 2 MiB hugetlb pages
dimm     a hot-plugged DIMM as node 1 (ci/test boots a guest of its own for these)
movable  a populated ZONE_MOVABLE (likewise, with movablecore=1G)
pmem     an emulated NVDIMM's fsdax, page-cache and devdax namespaces (likewise, --pmem 1G)

host_kernel  checks the tracer's tracepoint-only path on a kernel without kprobes (the
             host's); skipped where kprobes exist, whose full path tests/vm/test_trace_* cover
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hypothesis import settings
from needs import NEEDS, kprobes_missing

pytest_plugins = ["failed_frames"]

# Property-based suites: reproducible (derandomize), no example database in the checkout, no
# per-example deadline (a TCG guest is slow); each suite states its own max_examples.
settings.register_profile("rdmapin", deadline=None, derandomize=True, database=None,
                          print_blob=True)
settings.load_profile("rdmapin")

STRICT = os.environ.get("RDMAPIN_STRICT") == "1"


def pytest_report_header(config: pytest.Config) -> str:
    mode = "strict: missing devices/probes fail" if STRICT else "missing devices/probes skip"
    return f"rdmapin: {mode}; kernel {os.uname().release}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("host_kernel") is not None and kprobes_missing() is None:
        pytest.skip("kernel has kprobes: the full tracer is tested by tests/vm/test_trace_*")
    for name, probe in NEEDS.items():
        if item.get_closest_marker(name) is None:
            continue
        missing = probe()
        if missing is None:
            continue
        if STRICT:
            pytest.fail(f"needs {name}: {missing} (RDMAPIN_STRICT=1: failing, not skipping)",
                        pytrace=False)
        pytest.skip(f"needs {name}: {missing} (run it in the VM: ci/vm/run -- pytest)")
