"""Fixtures for the verbs tests: a real device, a real PD, and the pin baseline.

``pins`` records VmPin and the system-wide FOLL_PIN count before a test and, after it,
asserts both came back exactly: whatever the test did (including failing on purpose),
nothing stayed pinned.
"""

from __future__ import annotations

import gc
import json
import subprocess

import pytest

import rdmapin
from rdmapin import procfs

DEVICE = "rxe0"


@pytest.fixture
def pins():
    gc.collect()
    before = (procfs.vm_pin(), procfs.foll_pins())
    yield before
    gc.collect()
    after = (procfs.vm_pin(), procfs.foll_pins())
    assert after == before, f"(VmPin, foll pins) {before} -> {after}: something stayed pinned"


@pytest.fixture
def dev():
    with rdmapin.open_device(DEVICE) as d:
        yield d


@pytest.fixture
def pd(dev, pins):
    with dev.alloc_pd() as p:
        yield p


def rdma_res(kind: str) -> list[dict]:
    """`rdma -j resource show KIND` (mr, pd), the kernel's resource tracking."""
    out = subprocess.run(["rdma", "-j", "resource", "show", kind], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []
