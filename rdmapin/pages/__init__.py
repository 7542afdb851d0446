"""What really backs a virtual address range of any process, and whether the kernel agrees.

``inspect(addr, length, pid=None)`` reads pagemap, kpageflags, smaps and the zone layout
and returns a RegionReport; ``snapshot``/``compare`` show which pages moved;
``reconcile(pid=None)`` checks VmPin, VmLck, live MRs and the global FOLL_PIN count
against each other. Works with or without an MR: it only reads what the kernel exposes.

Note: the names ``snapshot`` and ``reconcile`` here are the functions (as ``os.path`` is
a module attribute); the modules stay importable as ``rdmapin.pages.snapshot`` through
``sys.modules``.
"""

from __future__ import annotations

from rdmapin.pages.reconcile import Reconciliation, reconcile
from rdmapin.pages.report import RegionReport, inspect
from rdmapin.pages.snapshot import Comparison, Snapshot, compare, snapshot

__all__ = ["Comparison", "Reconciliation", "RegionReport", "Snapshot", "compare", "inspect",
           "reconcile", "snapshot"]
