"""What really backs a virtual address range of any process, and whether the kernel agrees.

``inspect(addr, length, pid=None)`` reads pagemap, kpageflags, smaps and the zone layout
and returns a RegionReport; ``snapshot``/``compare`` show which pages moved;
``reconcile(pid=None)`` checks VmPin, VmLck, live MRs and the global FOLL_PIN count
against each other. Works with or without an MR: it only reads what the kernel exposes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RegionReport", "compare", "inspect", "reconcile", "snapshot"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import rdmapin.pages.pagemap` stays cheap for the tracer.
    if name in ("inspect", "RegionReport"):
        from rdmapin.pages import report
        return getattr(report, name)
    if name in ("snapshot", "compare"):
        from rdmapin.pages import snapshot as _snap
        return getattr(_snap, name)
    if name == "reconcile":
        from rdmapin.pages.reconcile import reconcile as _reconcile
        return _reconcile
    raise AttributeError(f"module 'rdmapin.pages' has no attribute {name!r}")
