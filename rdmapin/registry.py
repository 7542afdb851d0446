"""The in-process registry of live memory regions.

Owners of MRs register a source here (``add_source``): rdmapin.pd's lists every live MR of
every live PD, read from the shim only when asked, so registering an MR costs nothing here.
``pages`` (reconcile), ``physmap`` and ``trace`` (attribution, inventory) read ``live()``.
Entries are plain records, so readers never keep an MR alive or import the verbs layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MrRecord:
    """What the kernel pinned for one live MR of this process."""

    device: str
    addr: int
    length: int
    lkey: int
    rkey: int
    access: int
    handle: int  # the MR's kernel handle (ibv_mr.handle), unique per device context


_lock = threading.Lock()
# Callables yielding the MrRecords of MRs their owner tracks anyway (rdmapin.pd's PDs).
_sources: list[Callable[[], Iterable[MrRecord]]] = []


def add_source(source: Callable[[], Iterable[MrRecord]]) -> None:
    with _lock:
        _sources.append(source)


def live() -> list[MrRecord]:
    """Snapshot of the live MRs, sorted by address."""
    with _lock:
        sources = list(_sources)
    return sorted((rec for source in sources for rec in source()),
                  key=lambda r: (r.addr, r.length))
