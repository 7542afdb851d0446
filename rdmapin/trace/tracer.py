"""The tracer: loads the probes, drains their events on a thread, attributes each failed PFN
to its owner, and keeps totals that agree with /proc/vmstat.

    with rdmapin.trace.Tracer() as t:
        ...                       # move pages, compact, offline memory, register MRs
    t.totals()                    # {"pgmigrate_fail": 64, "compact_isolated": ..., ...}
    t.events()                    # [Event(kind=FOLIO_FAIL, pfn=..., owners=[Owner(...)])]
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from rdmapin import registry
from rdmapin.kernel import maps, procfs, rdma_res
from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.trace import decode as _decode
from rdmapin.trace import features as _features
from rdmapin.trace import inventory as _inventory
from rdmapin.trace import loader
from rdmapin.trace.attribution import Owner, OwnerMap
from rdmapin.trace.events import COUNTERS, LAYOUT, VMSTAT_KEYS, Event, Kind
from rdmapin.trace.ledger import Keys, Ledger, Live

log = logging.getLogger(__name__)

FILE_KINDS = (Kind.FILEMAP_DELETE, Kind.FILEMAP_WRITEBACK)  # a pinned file page, by PFN

POLL_MS = 50
PIN_WATCH_S = 0.05  # how often the kernel's live registrations are looked at (Ledger.watch)
PERF_PAGES = 1024


class Tracer:
    """Watch migration, compaction, isolation and pins system-wide.

    ``pid`` narrows ``events()`` to what that process did or owns; totals stay system-wide
    so they can be checked against /proc/vmstat. ``on_event`` is called on the tracer's
    thread for each event (the CLI prints from it).
    """

    def __init__(self, pid: int | None = None, *, inventory: bool = True,
                 ringbuf: bool | None = None, keep_events: int = 1_000_000,
                 on_event: Callable[[Event], None] | None = None,
                 free_scans: bool = False) -> None:
        self.pid = pid
        self.want_inventory = inventory
        self.want_ringbuf = ringbuf
        self.keep = keep_events
        self.on_event = on_event
        self.free_scans = free_scans
        self.features: _features.Features | None = None
        self.plan: loader.Plan | None = None
        self.program: loader.Program | None = None
        self.owners = OwnerMap()
        self.ledger = Ledger(self.owners)
        self.inventory: _inventory.Inventory | None = None
        self._events: collections.deque[Event] = collections.deque(maxlen=keep_events)
        self.events_dropped = 0  # beyond keep_events (kept in the summaries, not the list)
        self._perf_lost = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pins_thread: threading.Thread | None = None
        self._pins_lock = threading.Lock()  # Ledger.early*, between the two threads
        self._t0_ns = 0
        self._tid_owners: dict[int, dict[int, Owner]] = {}
        self._registry_seen: set[tuple[str, int]] = set()
        self._names = _decode.Names()
        self._attributors: dict[Kind, Callable[[Event, Any], None]] = {
            Kind.MIGRATE: self._attribute_migrate, Kind.FOLIO_FAIL: self._attribute_folio,
            Kind.ISOLATE_MIGRATE: self._attribute_scan, Kind.ISOLATE_FREE: self._attribute_scan,
            Kind.ISOLATION_TEST: self._attribute_isolation,
            Kind.UMEM_BEGIN: self._attribute_umem_begin, Kind.UMEM_GET: self._attribute_umem_get,
            Kind.UMEM_RELEASE: self._attribute_umem_release,
            Kind.PIN_LONGTERM: self._attribute_pin,
            Kind.FILEMAP_DELETE: self._attribute_filemap,
            Kind.FILEMAP_WRITEBACK: self._attribute_filemap,
            Kind.MR_KEYS: self._attribute_mr_keys,
        }
        self._table: Any = None
        self._umem_live: Any = None
        self._umem_gen: Any = None
        self._pin_recent: Any = None
        self._pins_gen = 0
        # The kernel's MR list (netlink) for the keys of registrations read ahead: only where
        # bpf/mrkeys.c did not attach (it gives them at registration, see Ledger).
        self._keys_fallback: Callable[[int], list] | None = rdma_res.mrs
        self.started = 0.0

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> Tracer:
        self.features = _features.probe()
        self._names = _decode.Names(self.features.migrate_reasons,
                                    self.features.compaction_status,
                                    self.features.collapse_status)
        extra = {"RP_EMIT_FREE_SCANS": None} if self.free_scans else None
        self.plan = loader.plan(self.features, ringbuf=self.want_ringbuf)
        self.program = loader.load(self.plan, extra=extra)
        self._t0_ns = time.monotonic_ns()
        self.started = time.time()
        b = self.program.bpf
        self._table = b[b"rp_events"]
        self._check_layout()
        if self.program.has("umem"):
            self._umem_live, self._umem_gen = b[b"rp_umem_live"], b[b"rp_umem_gen"]
        if self.program.has("mr_keys"):
            self._keys_fallback = None
        if any(self.program.has(n) for n in _features.PIN_PROBES):
            self._pin_recent, self._umem_gen = b[b"rp_pin_recent"], b[b"rp_umem_gen"]
        if self.program.ringbuf:
            self._table.open_ring_buffer(self._on_raw)
        else:
            self._table.open_perf_buffer(self._on_raw, page_cnt=PERF_PAGES,
                                         lost_cb=self._on_lost)
        if self.want_inventory:
            with self._lock:
                self.inventory = _inventory.take(self.owners)
                self._registry_seen = {(o.device, o.lkey) for o in self.owners.owners.values()
                                       if o.source == "registry"}
        self._thread = threading.Thread(target=self._run, name="rdmapin-trace", daemon=True)
        self._thread.start()
        if self._umem_gen is not None:
            self._pins_thread = threading.Thread(target=self._run_pins, name="rdmapin-pins",
                                                 daemon=True)
            self._pins_thread.start()
        return self

    def _check_layout(self) -> None:
        """The program submits the record the header declares (decode.Record), or nothing
        is read from it."""
        try:
            LAYOUT.check_compiled(_compiled_fields(self.program.bpf, b"rp_events"))
        except Exception:
            self.program.close()
            self.program = None
            raise

    def __enter__(self) -> Tracer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Drain what is buffered, detach, and keep totals/events readable."""
        if self.program is None:
            return
        self._stop.set()
        for t in (self._thread, self._pins_thread):
            if t is not None:
                t.join()
        self._thread = self._pins_thread = None
        self._final_totals = self._read_totals()
        self._final_hists = self._read_hists()
        self.poll(0)  # what arrived while the totals were read
        self.program.close()
        self.program = None

    def pause(self) -> None:
        """Detach the probes but keep state, totals and the compiled program."""
        if self.program is not None:
            self.poll(0)
            with self._lock:
                self.program.pause()

    def resume(self) -> None:
        if self.program is not None:
            with self._lock:
                self.program.resume()

    @property
    def unavailable(self) -> str | None:
        if self.program is not None:
            return self.program.unavailable_line()
        return self.features.unavailable_line() if self.features else None

    # draining ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll(POLL_MS)
        self.poll(0)

    def _run_pins(self) -> None:
        """Read the pages of new registrations and pins while they are pinned (Ledger.watch,
        Ledger.watch_pins), on a thread of its own: the draining thread reads events in order
        and may be far behind (a flood of failures in a TCG guest) or blocked (printing into a
        full pipe)."""
        while not self._stop.wait(PIN_WATCH_S):
            try:
                self._watch_pins()
            except Exception:  # never the reason the tracer stops; the event path remains
                log.exception("reading new registrations' pages")

    def _watch_pins(self) -> None:
        gen = int(self._umem_gen[0].value)
        with self._pins_lock:
            if gen == self._pins_gen and not (self._keys_fallback is not None
                                              and self.ledger.keys_wanted()):
                return
            self._pins_gen = gen
            if self._pin_recent is not None:
                recent = {int(k.value): (int(v.pid), int(v.start), int(v.nr_pages))
                          for k, v in self._pin_recent.items()}
                self.ledger.watch_pins(recent, PAGE_SIZE)
                for ts_ns in recent:  # no release event: read once, then forgotten
                    with contextlib.suppress(KeyError):
                        del self._pin_recent[self._pin_recent.Key(ts_ns)]
            if self._umem_live is None:
                return
            live = {(int(k.value), int(v.ts_ns)): Live(int(v.pid), int(v.addr), int(v.size),
                                                        _keys(v))
                    for k, v in self._umem_live.items()}

            def still_live(umem: int, ts_ns: int) -> bool:
                try:
                    return int(self._umem_live[self._umem_live.Key(umem)].ts_ns) == ts_ns
                except KeyError:
                    return False

            self.ledger.watch(live, still_live, self._keys_fallback)

    def poll(self, timeout_ms: int = 0) -> None:
        """Read what the kernel has buffered (the thread does this; callers may too)."""
        if self.program is None:
            return
        with self._lock:
            b = self.program.bpf
            if self.program.ringbuf:
                b.ring_buffer_poll(timeout_ms) if timeout_ms else b.ring_buffer_consume()
            else:
                b.perf_buffer_poll(timeout_ms)

    def _on_lost(self, lost: int) -> None:
        self._perf_lost += lost

    def _on_raw(self, _ctx: Any, data: Any, _size: int) -> None:
        r = _decode.record(data)
        ev = _decode.decode(r, self._t0_ns, self._names)
        attribute = self._attributors.get(ev.kind)
        if attribute is not None:
            attribute(ev, r)
        if len(self._events) == self._events.maxlen:
            self.events_dropped += 1
        self._events.append(ev)
        if self.on_event is not None and self._wanted(ev):
            if ev.failed or ev.kind in (Kind.ISOLATE_MIGRATE, *FILE_KINDS):
                for o in ev.owners:
                    self.owners.resolve_keys(o)
            self.on_event(ev)

    # decoding and attribution ----------------------------------------------------------------
    def _lookup(self, pfn: int) -> Owner | None:
        o = self.owners.lookup(pfn)
        if o is None and self._refresh_registry():
            o = self.owners.lookup(pfn)
        return o

    def _refresh_registry(self) -> bool:
        """MRs this process registered since start, when no ledger (kprobes) saw them."""
        if self.program is not None and self.program.has("umem"):
            return False
        live = registry.live()
        new = [r for r in live if (r.device, r.lkey) not in self._registry_seen]
        for r in new:
            self._registry_seen.add((r.device, r.lkey))
            self.owners.add_range(Owner(pid=os.getpid(), comm=procfs.comm(os.getpid()),
                                        addr=r.addr, length=r.length, source="registry",
                                        lkey=r.lkey, device=r.device, rkey=r.rkey,
                                        keys_from="registry"))
        return bool(new)

    # Attribution: the ledger's and the owner map's part, after decoding. Each reads the
    # decoded event and, of the record, only the generic fields (tid, pid, ts_ns, ret).
    def _attribute_migrate(self, ev: Event, r: Any) -> None:
        seen = self._tid_owners.pop(r.tid, {})
        pending = self.ledger.registering(r.tid)
        if pending is not None and ev.reason == "longterm_pin":
            seen.setdefault(-1, pending)
        ev.owners = list(seen.values())

    def _attribute_folio(self, ev: Event, r: Any) -> None:
        o = self._lookup(ev.pfn) or self.ledger.registering(r.tid)
        if o is not None:
            ev.owners = [o]
            self._tid_owners.setdefault(r.tid, {})[o.ident] = o

    def _attribute_scan(self, ev: Event, r: Any) -> None:
        hits = self.owners.in_range(ev.pfn, ev.pfn_end)
        ev.owners = [self.owners.owners[i] for i in hits]
        ev.detail["pinned"] = sum(hits.values())

    def _attribute_isolation(self, ev: Event, r: Any) -> None:
        if not ev.detail["busy"]:
            return
        fin = ev.detail["fin_pfn"]
        o = self._lookup(fin)
        if o is not None:
            ev.owners = [o]
        else:
            hits = self.owners.in_range(fin, ev.pfn_end)
            ev.owners = [self.owners.owners[i] for i in hits]

    def _attribute_umem_begin(self, ev: Event, r: Any) -> None:
        d = ev.detail
        ev.owners = [self.ledger.begin(r.tid, r.pid, ev.comm, d["addr"], d["length"], r.ts_ns)]

    def _attribute_umem_get(self, ev: Event, r: Any) -> None:
        d = ev.detail
        with self._pins_lock:
            o = self.ledger.got(r.tid, r.pid, ev.comm, d["addr"], d["length"], d["umem"], r.ret,
                                r.ts_ns)
        ev.owners = [o] if o else []

    def _attribute_umem_release(self, ev: Event, r: Any) -> None:
        o = self.ledger.release(ev.detail["umem"])
        ev.owners = [o] if o else []

    def _attribute_mr_keys(self, ev: Event, r: Any) -> None:
        d = ev.detail
        with self._pins_lock:
            o = self.ledger.keyed(d["umem"], d["umem_get_ts"],
                                  Keys(d["lkey"], d["rkey"], d["device"]))
        ev.owners = [o] if o else []

    def _attribute_pin(self, ev: Event, r: Any) -> None:
        d = ev.detail
        if d["nr_pages"]:
            with self._pins_lock:
                ev.owners = [self.ledger.pinned(r.pid, ev.comm, d["addr"], d["nr_pages"],
                                                PAGE_SIZE, r.ts_ns)]

    def _attribute_filemap(self, ev: Event, r: Any) -> None:
        """A pinned folio left its file's page cache or is being written back: the owners of
        its PFNs, named by the file (the pinner's mapping of that inode at the owner's
        address)."""
        nr = ev.detail["nr_pages"]
        if nr == 1:
            o = self._lookup(ev.pfn)
            ev.owners = [o] if o is not None else []
        else:
            hits = self.owners.in_range(ev.pfn, ev.pfn + nr)
            ev.owners = [self.owners.owners[i] for i in hits]
        for o in ev.owners:
            if o.file is None:
                o.file = _mapped_file(o, ev.detail["ino"])
        named = [o.file for o in ev.owners if o.file]
        if named:
            ev.detail["file"] = named[0]

    def _wanted(self, ev: Event) -> bool:
        return self.pid is None or ev.pid == self.pid or any(o.pid == self.pid for o in ev.owners)

    # results -----------------------------------------------------------------------------
    def events(self, kind: Kind | None = None) -> list[Event]:
        """Events so far (for ``pid``, if given), oldest first."""
        self.poll(0)
        with self._lock:
            evs = [e for e in self._events if self._wanted(e)]
        if kind is not None:
            evs = [e for e in evs if e.kind == kind]
        for e in evs:
            for o in e.owners:
                self.owners.resolve_keys(o)
        return evs

    def _read_totals(self) -> dict[str, int]:
        t = self.program.bpf[b"rp_totals"]
        out = {name: int(t.sum(t.Key(i)).value) for i, name in enumerate(COUNTERS)}
        out["lost_events"] += self._perf_lost
        return out

    def totals(self) -> dict[str, int]:
        """Counts since start; the vmstat-named ones equal /proc/vmstat deltas."""
        if self.program is None:
            return dict(getattr(self, "_final_totals", {}))
        return self._read_totals()

    def vmstat_and_totals(self, tries: int = 50) -> tuple[dict[str, int], dict[str, int]]:
        """/proc/vmstat and ``totals()`` read at one moment nothing migrated or compacted.

        Read one after the other, a background migration between the two reads (kcompactd,
        a NUMA hint fault) lands in one and not the other: a full VM run saw the pair differ
        by 2 pages. So each is read twice, interleaved, until neither moved in between (the
        last pair if the system never stops for ``tries`` reads)."""
        for _ in range(tries):
            t_a, v_a = self.totals(), procfs.vmstat()
            t_b, v_b = self.totals(), procfs.vmstat()
            if all(t_a.get(k) == t_b.get(k) and v_a.get(k) == v_b.get(k) for k in VMSTAT_KEYS):
                break
        return v_a, t_a

    def _read_hists(self) -> dict[str, dict[int, int]]:
        out = {}
        b = self.program.bpf
        for name, table in (("migrate_latency_us", "rp_migrate_lat_us"),
                            ("compaction_latency_us", "rp_compact_lat_us")):
            try:
                t = b[table.encode()]
            except KeyError:
                continue
            out[name] = {int(k.value): int(v.value) for k, v in t.items() if v.value}
        return out

    def histograms(self) -> dict[str, dict[int, int]]:
        """log2 buckets (bucket b holds [2^(b-1), 2^b) us) of migration and compaction time."""
        if self.program is None:
            return dict(getattr(self, "_final_hists", {}))
        return self._read_hists()


def _keys(v: Any) -> Keys | None:
    """The MR keys bpf/mrkeys.c wrote into an rp_umem_live value, once it has."""
    if not v.keyed:
        return None
    return Keys(int(v.lkey), int(v.rkey), bytes(v.device).split(b"\0", 1)[0].decode(
        errors="surrogateescape"))


def _mapped_file(o: Owner, ino: int) -> str | None:
    """The path of the file mapped at ``o``'s address in its process, when that mapping is
    of inode ``ino`` (the event's); None when the process or mapping is gone."""
    try:
        vmas = maps.covering(o.pid, o.addr, o.length, detail=False)
    except Exception:  # the pinner exited: the event keeps the inode and device
        return None
    for v in vmas:
        if v.inode == ino and v.path:
            return v.path
    return None


def _compiled_fields(b: Any, table: bytes) -> list[str]:
    """The fields of the struct the program submits to ``table``, as bcc's compiler recorded
    them (``name#type``; what bcc's own ``table.event()`` would build its struct from)."""
    from bcc.libbcc import lib

    n = lib.bpf_perf_event_fields(b.module, table)
    return [lib.bpf_perf_event_field(b.module, table, i).decode() for i in range(n)]
