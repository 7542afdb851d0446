"""Decoded tracer events: one record type for the live view, JSON lines and summaries.

Kinds and counters are read from bpf/rdmapin_events.h (rdmapin.trace.layout), never
mirrored: ``Kind`` is its enum rp_kind without the RP_ prefix, ``COUNTERS`` its enum
rp_counter (the keys of ``Tracer.totals()``), ``VMSTAT_KEYS`` the counters it marks as
equal to /proc/vmstat's of the same name."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from rdmapin.trace import layout as _layout
from rdmapin.trace.attribution import Owner

LAYOUT = _layout.load()

Kind = enum.IntEnum("Kind", LAYOUT.kinds, module=__name__, qualname="Kind")
Kind.__doc__ = "enum rp_kind of bpf/rdmapin_events.h, without RP_ (Kind.FOLIO_FAIL)."

# enum rp_counter order -> the name used in totals(); vmstat names where the kernel keeps
# the same count, so a test can compare key by key.
COUNTERS = tuple(c.name for c in LAYOUT.counters)
VMSTAT_KEYS = tuple(c.name for c in LAYOUT.counters if c.vmstat)

# Display names for the EVENT column.
EVENT_NAMES = {
    Kind.MIGRATE: "migrate", Kind.FOLIO_FAIL: "folio_fail", Kind.COMPACT_BEGIN: "compact_begin",
    Kind.COMPACT_END: "compact_end", Kind.ISOLATE_MIGRATE: "compact_scan",
    Kind.ISOLATE_FREE: "compact_free_scan", Kind.COMPACT_MIGRATE: "compact_migrate",
    Kind.COMPACT_FINISHED: "compact_finished", Kind.COMPACT_DEFERRED: "compact_deferred",
    Kind.ISOLATION_TEST: "isolate_test", Kind.COLLAPSE: "collapse_fail",
    Kind.UMEM_BEGIN: "umem_begin", Kind.UMEM_GET: "umem_get", Kind.UMEM_RELEASE: "umem_release",
    Kind.PIN_LONGTERM: "pin_longterm", Kind.FILEMAP_DELETE: "pagecache_delete",
    Kind.FILEMAP_WRITEBACK: "pagecache_writeback", Kind.MR_KEYS: "mr_keys",
}


@dataclass
class Event:
    """One thing the kernel did, with the owners of the pages it touched."""

    ts: float            # seconds since the tracer started
    kind: Kind
    pid: int             # the task the kernel ran it in
    tid: int
    comm: str
    reason: str          # migrate reason / compaction status / errno name, "" when none
    pfn: int | None = None        # the one PFN (folio failure, first busy PFN)
    pfn_end: int | None = None    # [pfn, pfn_end) for ranges
    owners: list[Owner] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return EVENT_NAMES[self.kind]

    @property
    def failed(self) -> bool:
        if self.kind == Kind.MIGRATE:
            return self.detail.get("failed", 0) > 0
        return self.kind in (Kind.FOLIO_FAIL, Kind.COLLAPSE) or (
            self.kind == Kind.ISOLATION_TEST and self.detail.get("busy", False))

    def owner_label(self) -> str:
        if self.kind in (Kind.FOLIO_FAIL, Kind.ISOLATION_TEST, Kind.MIGRATE) and not self.owners:
            return "unowned" if self.failed else "-"
        if not self.owners:
            return "-"
        more = f" +{len(self.owners) - 1}" if len(self.owners) > 1 else ""
        return self.owners[0].label() + more

    def range_text(self) -> str:
        if self.pfn is None:
            return "-"
        if self.pfn_end is None:
            return f"{self.pfn:#x}"
        return f"{self.pfn:#x}-{self.pfn_end:#x}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": round(self.ts, 6), "event": self.name, "pid": self.pid, "tid": self.tid,
            "comm": self.comm, "reason": self.reason, "pfn": self.pfn, "pfn_end": self.pfn_end,
            "owners": [o.to_dict() for o in self.owners], "detail": self.detail,
        }
