"""Fixtures for the verbs tests: a real device, a real PD, and the pin baseline.

``pins`` records VmPin and the system-wide FOLL_PIN count before a test and, after it,
asserts both came back exactly: whatever the test did (including failing on purpose),
nothing stayed pinned.
"""

from __future__ import annotations

import gc

import pytest
from verbs_util import DEVICE

import rdmapin
from rdmapin.kernel import procfs


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

