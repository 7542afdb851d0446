"""Every metric family the exporter serves, in one table, and the exposition built from a
``View`` (the latest scans and the tracer's state).

Conventions: base units in names (``_bytes``, ``_seconds``), counters end in ``_total``, HELP
and TYPE on every family (also when it has no sample yet). Per-process series are bounded:
the ``top`` processes by pinned bytes get their own (``pid``, ``comm``), the rest add up in
one series with ``pid="other"``; tracer owners likewise by failures, and failures on pages
no known pin explains are ``pid="unowned"``. A pid label is otherwise a number, so no
process can name itself into those. ``comm`` is the process's own name escaped
(rdmapin.kernel.printable), as text and JSON print it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from rdmapin.exporter.scan import BACKINGS, DoctorScan, ProcessFacts, ProcessScan, ZoneScan
from rdmapin.kernel.printable import escape
from rdmapin.pages.descriptors import DEVICE_PAGE_SIZES
from rdmapin.trace.events import LAYOUT

OTHER = "other"
UNOWNED = "unowned"
SCANS = ("processes", "zones", "doctor")
PROC = ("pid", "comm")
ZONE = ("node", "zone")


@dataclass(frozen=True)
class Family:
    name: str  # as it appears in a scrape (a counter's ends in _total)
    kind: str  # "gauge" or "counter"
    help: str
    labels: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        """The name prometheus_client takes (it adds a counter's _total itself)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    def new(self) -> Metric:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return cls(self.base, self.help, labels=list(self.labels))


def _trace_counters() -> tuple[Family, ...]:
    out = []
    for c in LAYOUT.counters:
        if c.vmstat:
            what = f"equals the growth of /proc/vmstat {c.name} since the tracer attached"
        elif c.name == "lost_events":
            what = "events the tracer's buffer refused (its event counts are then low; " \
                   "the totals stay exact)"
        else:
            what = "seen by the tracer since it attached (bpf/rdmapin_events.h rp_counter)"
        out.append(Family(f"rdmapin_trace_{c.name}_total", "counter", f"{c.name}: {what}"))
    return tuple(out)


FAMILIES: tuple[Family, ...] = (
    Family("rdmapin_exporter_info", "gauge", "1, with the exporter's version and --top",
           ("version", "top")),
    Family("rdmapin_process_pinned_bytes", "gauge",
           "long-term pinned memory charged to the process (VmPin of /proc/PID/status)", PROC),
    Family("rdmapin_process_locked_bytes", "gauge",
           "mlocked memory of the process (VmLck of /proc/PID/status)", PROC),
    Family("rdmapin_process_memlock_limit_bytes", "gauge",
           "soft RLIMIT_MEMLOCK the kernel checks VmPin against when pinning (+Inf: unlimited)",
           PROC),
    Family("rdmapin_process_mrs", "gauge",
           "memory regions the process holds on the device (the kernel's rdma resource list)",
           (*PROC, "device")),
    Family("rdmapin_process_mr_bytes", "gauge",
           "bytes registered in the process's memory regions on the device", (*PROC, "device")),
    Family("rdmapin_process_pinned_backing_bytes", "gauge",
           "pinned bytes of the process by what backs them (4k, thp, hugetlb, other), read "
           "from its pagemap, /proc/kpageflags and the pages' pin counts", (*PROC, "backing")),
    Family("rdmapin_process_dma_blocks", "gauge",
           "DMA blocks a device whose largest page size is page_size_bytes needs for the "
           "process's pinned ranges (ib_umem_find_best_pgsz over their physical layout)",
           (*PROC, "page_size_bytes")),
    Family("rdmapin_processes_pinning", "gauge",
           "processes with pinned memory or memory regions (all of them, not only the top)"),
    Family("rdmapin_foll_pinned_pages", "gauge",
           "pages pinned system-wide with FOLL_PIN: /proc/vmstat nr_foll_pin_acquired - "
           "nr_foll_pin_released"),
    Family("rdmapin_zone_free_2m_blocks", "gauge",
           "pageblocks (2 MiB) of the zone that are entirely free now", ZONE),
    Family("rdmapin_zone_reachable_2m_blocks", "gauge",
           "free 2 MiB blocks the zone could have if every movable page moved (pageblocks "
           "without unmovable or pinned pages, capped by free memory)", ZONE),
    Family("rdmapin_zone_pinned_pageblocks", "gauge",
           "pageblocks of the zone holding at least one pinned page", ZONE),
    Family("rdmapin_zone_pageblocks_lost_to_pins", "gauge",
           "pageblocks of the zone that only their pinned pages keep from being compacted "
           "into free 2 MiB blocks", ZONE),
    Family("rdmapin_doctor_check_status", "gauge",
           "rdmapin doctor's verdict per check: 0 pass, 1 warn, 2 fail", ("check",)),
    Family("rdmapin_scan_timestamp_seconds", "gauge",
           "when the scan last finished (Unix time): how fresh its values are", ("scan",)),
    Family("rdmapin_scan_duration_seconds", "gauge", "how long the last scan took",
           ("scan",)),
    Family("rdmapin_scan_interval_seconds", "gauge", "seconds between two scans",
           ("scan",)),
    Family("rdmapin_scans_total", "counter", "scans finished", ("scan",)),
    Family("rdmapin_scan_errors_total", "counter",
           "scans that failed (the exporter's log says why; the last values keep serving)",
           ("scan",)),
    Family("rdmapin_scan_unreadable_processes", "gauge",
           "processes with pins or memory regions whose pages (or status) the last scan "
           "could not read (another user's without root, or no /proc/kcore): their backing "
           "and DMA blocks are missing"),
    Family("rdmapin_scan_vanished_processes_total", "counter",
           "pinning processes that exited, or whose pid a new process took, while scanned"),
    Family("rdmapin_textfile_errors_total", "counter",
           "failed writes of the textfile collector's file"),
    Family("rdmapin_tracer_up", "gauge",
           "1 while the tracer is attached; 0 when it cannot attach or stopped (the gauges "
           "keep serving)"),
    *_trace_counters(),
    Family("rdmapin_trace_migrate_pages_total", "counter",
           "pages migrate_pages() moved or failed to move, by reason (compaction, "
           "memory_hotplug, syscall_or_cpuset, ...) and result", ("reason", "result")),
    Family("rdmapin_trace_owner_folio_failures_total", "counter",
           "folios that failed to migrate, once per migration call (as pgmigrate_fail "
           "counts), by the owner of their pin", (*PROC, "lkey")),
    Family("rdmapin_trace_isolation_refused_total", "counter",
           "page-range isolations (memory offline, alloc_contig_range) refused at a pinned "
           "page, by its owner", PROC),
)
BY_NAME = {f.name: f for f in FAMILIES}


@dataclass
class View:
    """What one exposition is built from; None where nothing was read yet."""

    top: int
    settings: dict[str, str] = field(default_factory=dict)  # exporter_info's labels
    intervals: dict[str, float] = field(default_factory=dict)  # seconds between scans
    processes: ProcessScan | None = None
    zones: ZoneScan | None = None
    doctor: DoctorScan | None = None
    scans: dict[str, int] = field(default_factory=dict)  # finished scans by kind
    errors: dict[str, int] = field(default_factory=dict)  # failed scans by kind
    vanished: int = 0  # over all scans
    textfile_errors: int | None = None  # None: not in textfile mode
    tracer_up: bool = False
    trace_totals: dict[str, int] = field(default_factory=dict)
    trace_migrate: dict[tuple[str, str], int] = field(default_factory=dict)
    trace_owners: list[dict[str, Any]] = field(default_factory=list)  # failures_by_owner
    trace_isolation: list[dict[str, Any]] = field(default_factory=list)


def _fold(rows: list[ProcessFacts], top: int) -> Iterator[tuple[tuple[str, str], ProcessFacts
                                                                 | list[ProcessFacts]]]:
    """The first ``top`` rows each under their own labels, then the rest as one list."""
    for p in rows[:top]:
        yield (str(p.pid), escape(p.comm)), p
    if len(rows) > top:
        yield (OTHER, ""), rows[top:]


def _processes(m: dict[str, Metric], scan: ProcessScan, top: int) -> None:
    m["rdmapin_processes_pinning"].add_metric([], len(scan.processes))
    m["rdmapin_foll_pinned_pages"].add_metric([], scan.foll_pinned)
    m["rdmapin_scan_unreadable_processes"].add_metric([], scan.unreadable)
    for labels, got in _fold(list(scan.processes), top):
        group = got if isinstance(got, list) else [got]
        lb = list(labels)
        m["rdmapin_process_pinned_bytes"].add_metric(lb, sum(p.pinned for p in group))
        m["rdmapin_process_locked_bytes"].add_metric(lb, sum(p.locked for p in group))
        if not isinstance(got, list):  # a limit does not add up
            limit = got.memlock_limit
            m["rdmapin_process_memlock_limit_bytes"].add_metric(
                lb, float("inf") if limit is None else limit)
        devices: dict[str, list[int]] = {}
        for p in group:
            for dev, (count, nbytes) in p.mrs.items():
                acc = devices.setdefault(dev, [0, 0])
                acc[0] += count
                acc[1] += nbytes
        for dev, (count, nbytes) in sorted(devices.items()):
            m["rdmapin_process_mrs"].add_metric([*lb, dev], count)
            m["rdmapin_process_mr_bytes"].add_metric([*lb, dev], nbytes)
        known = [p for p in group if p.backing is not None]
        if not known:
            continue
        for name in BACKINGS:
            m["rdmapin_process_pinned_backing_bytes"].add_metric(
                [*lb, name], sum(p.backing[name] for p in known))
        for size in DEVICE_PAGE_SIZES:
            m["rdmapin_process_dma_blocks"].add_metric(
                [*lb, str(size)], sum(p.dma_blocks[size] for p in known))


def owner_labels(row: dict[str, Any]) -> tuple[str, str, str]:
    """(pid, comm, lkey) of a Summary owner row; failures on no known pin are 'unowned'."""
    if row["pid"] is None:
        return UNOWNED, "", ""
    return (str(row["pid"]), escape(str(row["comm"])),
            "" if row["lkey"] is None else hex(row["lkey"]))


def _top_series(rows: Iterable[tuple[tuple[str, ...], int]], top: int, width: int
                ) -> list[tuple[tuple[str, ...], int]]:
    """Rows of one label set added up; the ``top`` largest kept, the rest as 'other'
    ('unowned' always kept)."""
    series: dict[tuple[str, ...], int] = {}
    for labels, value in rows:
        series[labels] = series.get(labels, 0) + value
    ranked = sorted(series.items(), key=lambda kv: (kv[0][0] == UNOWNED, -kv[1], kv[0]))
    kept = [kv for kv in ranked if kv[0][0] == UNOWNED]
    owned = [kv for kv in ranked if kv[0][0] != UNOWNED]
    kept += owned[:top]
    if len(owned) > top:
        kept.append(((OTHER, *[""] * (width - 1)), sum(v for _, v in owned[top:])))
    return kept


def _tracer(m: dict[str, Metric], v: View) -> None:
    m["rdmapin_tracer_up"].add_metric([], 1 if v.tracer_up else 0)
    for name, value in v.trace_totals.items():
        fam = m.get(f"rdmapin_trace_{name}_total")
        if fam is not None:
            fam.add_metric([], value)
    for (reason, result), n in sorted(v.trace_migrate.items()):
        m["rdmapin_trace_migrate_pages_total"].add_metric([reason, result], n)
    owners = ((owner_labels(r), r["failures"]) for r in v.trace_owners)
    for labels, n in _top_series(owners, v.top, 3):
        m["rdmapin_trace_owner_folio_failures_total"].add_metric(list(labels), n)
    busy = ((owner_labels(r)[:2], r["tests"]) for r in v.trace_isolation)
    for labels, n in _top_series(busy, v.top, 2):
        m["rdmapin_trace_isolation_refused_total"].add_metric(list(labels), n)


def build(v: View) -> list[Metric]:
    """The families of one exposition, in FAMILIES' order."""
    m = {f.name: f.new() for f in FAMILIES}
    if v.settings:
        info = BY_NAME["rdmapin_exporter_info"]
        m[info.name].add_metric([v.settings.get(k, "") for k in info.labels], 1)
    if v.processes is not None:
        _processes(m, v.processes, v.top)
    if v.zones is not None:
        for z in v.zones.zones:
            lb = [str(z.node), z.zone]
            m["rdmapin_zone_free_2m_blocks"].add_metric(lb, z.free_2m)
            m["rdmapin_zone_reachable_2m_blocks"].add_metric(lb, z.reachable_2m)
            m["rdmapin_zone_pinned_pageblocks"].add_metric(lb, z.pinned_blocks)
            m["rdmapin_zone_pageblocks_lost_to_pins"].add_metric(lb, z.lost_to_pins)
    if v.doctor is not None:
        for check, status in sorted(v.doctor.checks.items()):
            m["rdmapin_doctor_check_status"].add_metric([check], status)
    for kind, scan in (("processes", v.processes), ("zones", v.zones), ("doctor", v.doctor)):
        if scan is not None:
            m["rdmapin_scan_timestamp_seconds"].add_metric([kind], scan.at)
            m["rdmapin_scan_duration_seconds"].add_metric([kind], scan.seconds)
    for kind in SCANS:
        if kind in v.intervals:
            m["rdmapin_scan_interval_seconds"].add_metric([kind], v.intervals[kind])
        m["rdmapin_scans_total"].add_metric([kind], v.scans.get(kind, 0))
        m["rdmapin_scan_errors_total"].add_metric([kind], v.errors.get(kind, 0))
    m["rdmapin_scan_vanished_processes_total"].add_metric([], v.vanished)
    if v.textfile_errors is not None:
        m["rdmapin_textfile_errors_total"].add_metric([], v.textfile_errors)
    _tracer(m, v)
    return list(m.values())


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def render(v: View) -> bytes:
    """The text exposition (format 0.0.4) of ``v``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(build(v)))
    return generate_latest(registry)
