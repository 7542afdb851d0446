"""The in-process registry of live memory regions.

``verbs`` adds each MR here when it is registered and removes it when it is closed; ``pages``
(reconcile) and ``trace`` (attribution) read it. Entries are plain records, so readers never
keep an MR alive or import the verbs layer.
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
_live: dict[tuple[str, int], MrRecord] = {}
# Callables yielding the MrRecords of MRs their owner tracks anyway (rdmapin.pd's weak
# per-PD tables): read only when live() is asked, so registering an MR costs nothing here.
_sources: list[Callable[[], Iterable[MrRecord]]] = []


def add_source(source: Callable[[], Iterable[MrRecord]]) -> None:
    with _lock:
        _sources.append(source)


def add(rec: MrRecord) -> None:
    with _lock:
        _live[(rec.device, rec.lkey)] = rec


def remove(device: str, lkey: int) -> None:
    with _lock:
        _live.pop((device, lkey), None)


def live() -> list[MrRecord]:
    """Snapshot of the live MRs, sorted by address."""
    with _lock:
        recs = list(_live.values())
        sources = list(_sources)
    for source in sources:
        recs.extend(source())
    return sorted(recs, key=lambda r: (r.addr, r.length))
