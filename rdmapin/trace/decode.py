"""Decoding: one pure function per kind, from that kind's named fields (its member of
struct rp_event's union, bpf/rdmapin_events.h) to the event's PFN range, reason and detail.

Nothing here changes state: who owns the pages an event names is the tracer's next step
(attribution), which reads the decoded event, never the record's per-kind fields.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rdmapin.trace.events import LAYOUT, Event, Kind

Record = LAYOUT.record  # struct rp_event as ctypes
RECORD_SIZE = ctypes.sizeof(Record)
STAGES = LAYOUT.stages  # folio.stage (enum rp_folio_stage): the step that refused
MEMBERS: dict[Kind, str] = {Kind[k]: m.name for m in LAYOUT.members for k in m.kinds}


@dataclass(frozen=True)
class Names:
    """What the kernel's format files name the numbers in events (rdmapin.trace.features)."""

    migrate_reasons: Mapping[int, str] = field(default_factory=dict)
    compaction_status: Mapping[int, str] = field(default_factory=dict)
    collapse_status: Mapping[int, str] = field(default_factory=dict)


class Decoded(NamedTuple):
    detail: dict[str, Any]
    reason: str = ""
    pfn: int | None = None      # the one PFN (folio failure, first busy PFN)
    pfn_end: int | None = None  # [pfn, pfn_end) for ranges


def errname(rc: int) -> str:
    return errno.errorcode.get(-rc, str(rc)) if rc < 0 else ""


def _us(ns: int) -> float | None:
    return ns / 1000 if ns else None


def _migrate_reason(r: Any, names: Names) -> str:
    return names.migrate_reasons.get(r.reason, str(r.reason)) if r.reason >= 0 else ""


def _migrate(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"succeeded": f.succeeded, "failed": f.failed,
                    "thp_succeeded": f.thp_succeeded, "thp_failed": f.thp_failed,
                    "thp_split": f.thp_split, "mode": r.mode, "latency_us": _us(f.latency_ns)},
                   reason=_migrate_reason(r, names))


def _folio_fail(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"order": f.order, "refcount": f.refcount, "mapcount": f.mapcount,
                    "pincount": f.pincount, "errno": errname(r.ret),
                    "stage": STAGES.get(f.stage, str(f.stage))},
                   reason=_migrate_reason(r, names), pfn=f.pfn)


def _compact_begin(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"migrate_pfn": f.migrate_pfn, "free_pfn": f.free_pfn, "sync": bool(f.sync)},
                   pfn=f.zone_start, pfn_end=f.zone_end)


def _compact_end(f: Any, r: Any, names: Names) -> Decoded:
    d = _compact_begin(f, r, names)
    d.detail["latency_us"] = _us(f.latency_ns)
    return d._replace(reason=names.compaction_status.get(r.ret, str(r.ret)))


def _scan(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"scanned": f.nr_scanned, "taken": f.nr_taken},
                   pfn=f.start_pfn, pfn_end=f.end_pfn)


def _compact_migrate(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"migrated": f.nr_migrated, "failed": f.nr_failed})


def _compact_finished(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"nid": f.nid, "zone": f.zone, "order": f.order},
                   reason=names.compaction_status.get(r.ret, str(r.ret)))


def _compact_deferred(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"nid": f.nid, "zone": f.zone, "order": f.order,
                    "considered": f.considered, "defer_shift": f.defer_shift})


def _isolation_test(f: Any, r: Any, names: Names) -> Decoded:
    busy = f.fin_pfn < f.end_pfn
    return Decoded({"fin_pfn": f.fin_pfn, "busy": busy}, reason="busy" if busy else "isolated",
                   pfn=f.start_pfn, pfn_end=f.end_pfn)


def _collapse(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"isolated": f.isolated},
                   reason=names.collapse_status.get(r.ret, str(r.ret)))


def _umem_begin(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"addr": f.addr, "length": f.size, "access": f.access})


def _umem_get(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"addr": f.addr, "length": f.size, "access": f.access, "umem": f.umem},
                   reason=errname(r.ret))


def _umem_release(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"umem": f.umem})


def _mr_keys(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"umem": f.umem, "umem_get_ts": f.get_ts, "lkey": f.lkey, "rkey": f.rkey,
                    "length": f.length, "device": f.device.decode(errors="surrogateescape")})


def _pin_longterm(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"addr": f.start, "nr_pages": f.nr_pages, "requested": f.requested,
                    "gup_flags": f.gup_flags}, reason=errname(r.ret))


def _filemap(f: Any, r: Any, names: Names) -> Decoded:
    return Decoded({"ino": f.ino, "index": f.index, "dev": f.dev, "nr_pages": f.nr_pages,
                    "refcount": f.refcount},
                   pfn=f.pfn, pfn_end=f.pfn + f.nr_pages if f.nr_pages > 1 else None)


# kind -> function of (its union member's fields, the record, names): every kind has one
DECODERS: dict[Kind, Callable[[Any, Any, Names], Decoded]] = {
    Kind.MIGRATE: _migrate,
    Kind.FOLIO_FAIL: _folio_fail,
    Kind.COMPACT_BEGIN: _compact_begin,
    Kind.COMPACT_END: _compact_end,
    Kind.ISOLATE_MIGRATE: _scan,
    Kind.ISOLATE_FREE: _scan,
    Kind.COMPACT_MIGRATE: _compact_migrate,
    Kind.COMPACT_FINISHED: _compact_finished,
    Kind.COMPACT_DEFERRED: _compact_deferred,
    Kind.ISOLATION_TEST: _isolation_test,
    Kind.COLLAPSE: _collapse,
    Kind.UMEM_BEGIN: _umem_begin,
    Kind.UMEM_GET: _umem_get,
    Kind.UMEM_RELEASE: _umem_release,
    Kind.PIN_LONGTERM: _pin_longterm,
    Kind.FILEMAP_DELETE: _filemap,
    Kind.FILEMAP_WRITEBACK: _filemap,
    Kind.MR_KEYS: _mr_keys,
}


def record(data: int) -> Any:
    """The record at address ``data`` (a perf or ring buffer callback's), read in place."""
    return Record.from_address(data)


def decode(r: Any, t0_ns: int, names: Names) -> Event:
    """The event one record describes, owners not yet known; raises ValueError for a kind
    the header does not declare."""
    kind = Kind(r.kind)
    d = DECODERS[kind](getattr(r, MEMBERS[kind]), r, names)
    return Event(ts=(r.ts_ns - t0_ns) / 1e9, kind=kind, pid=r.pid, tid=r.tid,
                 comm=r.comm.decode(errors="surrogateescape"), reason=d.reason, pfn=d.pfn,
                 pfn_end=d.pfn_end, detail=d.detail)
