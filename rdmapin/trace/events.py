"""Decoded tracer events: one record type for the live view, JSON lines and summaries.
Kind numbers and counter slots mirror bpf/rdmapin_events.h."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from rdmapin.trace.attribution import Owner


class Kind(enum.IntEnum):
    MIGRATE = 1
    FOLIO_FAIL = 2
    COMPACT_BEGIN = 3
    COMPACT_END = 4
    ISOLATE_MIGRATE = 5
    ISOLATE_FREE = 6
    COMPACT_MIGRATE = 7
    COMPACT_FINISHED = 8
    COMPACT_DEFERRED = 9
    ISOLATION_TEST = 10
    COLLAPSE = 11
    UMEM_BEGIN = 12
    UMEM_GET = 13
    UMEM_RELEASE = 14
    PIN_LONGTERM = 15


# enum rp_counter order -> the name used in totals(); vmstat names where the kernel keeps
# the same count, so a test can compare key by key.
COUNTERS = (
    "pgmigrate_success", "pgmigrate_fail", "thp_migration_success", "thp_migration_fail",
    "thp_migration_split", "migrate_calls", "compact_migrate_scanned", "compact_free_scanned",
    "compact_isolated", "compaction_runs", "compaction_migrated", "compaction_migrate_failed",
    "compaction_deferred", "folio_failures", "folio_retries", "isolation_tests",
    "isolation_failures", "collapse_calls", "collapse_failures", "umem_gets", "umem_bytes",
    "umem_releases", "longterm_pins", "lost_events",
)
VMSTAT_KEYS = COUNTERS[:5] + COUNTERS[6:9]

# Display names for the EVENT column.
EVENT_NAMES = {
    Kind.MIGRATE: "migrate", Kind.FOLIO_FAIL: "folio_fail", Kind.COMPACT_BEGIN: "compact_begin",
    Kind.COMPACT_END: "compact_end", Kind.ISOLATE_MIGRATE: "compact_scan",
    Kind.ISOLATE_FREE: "compact_free_scan", Kind.COMPACT_MIGRATE: "compact_migrate",
    Kind.COMPACT_FINISHED: "compact_finished", Kind.COMPACT_DEFERRED: "compact_deferred",
    Kind.ISOLATION_TEST: "isolate_test", Kind.COLLAPSE: "collapse_fail",
    Kind.UMEM_BEGIN: "umem_begin", Kind.UMEM_GET: "umem_get", Kind.UMEM_RELEASE: "umem_release",
    Kind.PIN_LONGTERM: "pin_longterm",
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
