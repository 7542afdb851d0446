"""`rdmapin trace`: watch migration, compaction and isolation fail on pinned pages, live,
and name the MR and process that pinned them.

Runs bcc probes (bpf/*.c) system-wide. Without kprobes or kernel headers it runs the
tracepoint subset and says in one line what it cannot see. Ctrl-C detaches and prints a
summary. Totals agree with /proc/vmstat (pgmigrate_*, compact_*).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from rdmapin.cli import argtypes
from rdmapin.errors import RdmapinError
from rdmapin.kernel.printable import escape, escape_all
from rdmapin.trace.events import Event, Kind
from rdmapin.trace.summary import Summary, render

EXAMPLES = """examples:
  rdmapin trace                     # live events, all processes; Ctrl-C for a summary
  rdmapin trace -p 4242             # what pid 4242 did or owns
  rdmapin trace -T -d 30            # wall-clock timestamps, stop after 30 s
  rdmapin trace -s 5                # a summary every 5 s (failures by reason and owner)
  rdmapin trace -j                  # JSON lines, stable keys
  rdmapin trace --prometheus 127.0.0.1:9464   # counters for Prometheus too
  rdmapin trace --all               # also every compaction pageblock scan
  rdmapin trace --explain           # the plan: files, probes, defines; nothing loaded

COMM and the names in OWNER are the processes' own, escaped (rdmapin.kernel.printable:
\\x1b, \\u202e, \\xff for a byte that is not UTF-8, \\\\ for a backslash); JSON and
Prometheus labels carry the same escaped text.
"""

FMT = "{:<9} {:<15} {:>7} {:<16} {:<17} {:<25} {}"
HEADER = ("TIME(s)", "COMM", "PID", "EVENT", "REASON", "PFN/RANGE", "OWNER")
QUIET = (Kind.ISOLATE_FREE, Kind.UMEM_BEGIN, Kind.MR_KEYS)  # --all shows them


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="live compaction/migration failures on pinned pages",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--pid", type=argtypes.positive_int,
                   help="only events this pid ran or whose pages it pins")
    p.add_argument("-T", "--timestamp", action="store_true", help="wall-clock HH:MM:SS times")
    p.add_argument("-j", "--json", action="store_true", help="JSON lines instead of columns")
    p.add_argument("-d", "--duration", type=argtypes.positive_float, metavar="SECONDS",
                   help="stop after SECONDS")
    p.add_argument("-s", "--interval", type=argtypes.positive_float, metavar="INTERVAL",
                   help="print a summary every INTERVAL seconds")
    p.add_argument("--all", action="store_true",
                   help="every event, including scans of unpinned pageblocks")
    p.add_argument("--no-inventory", dest="inventory", action="store_false",
                   help="skip the start-up inventory of pins made before tracing")
    p.add_argument("--prometheus", type=argtypes.host_port, metavar="HOST:PORT",
                   help="serve counters for Prometheus (use 127.0.0.1 unless you mean it)")
    p.add_argument("--explain", action="store_true",
                   help="print the plan (files, probes, defines, what is missing) and exit "
                        "without loading; doctor's 'trace plan' check is the same plan")
    p.set_defaults(func=run)


def explain(args: argparse.Namespace) -> int:
    """The plan a trace would load, like bcc tools' --ebpf: nothing is compiled."""
    from rdmapin.trace import features, loader

    pl = loader.plan(features.probe())
    if args.json:
        print(json.dumps(pl.to_dict(), sort_keys=True))
    else:
        print("\n".join(pl.lines()))
    return 0


def interesting(ev: Event) -> bool:
    """The default live view: failures, pins, compaction runs, scans over pinned blocks."""
    if ev.kind in QUIET:
        return False
    if ev.kind == Kind.ISOLATE_MIGRATE:
        return bool(ev.owners)
    if ev.kind == Kind.COMPACT_FINISHED:
        return ev.reason != "continue"
    if ev.kind == Kind.ISOLATION_TEST:
        return ev.detail.get("busy", False)
    if ev.kind in (Kind.FILEMAP_DELETE, Kind.FILEMAP_WRITEBACK):  # owned, or maybe-pinned
        return bool(ev.owners) or ev.detail["refcount"] > 0
    return True


class Printer:
    def __init__(self, args: argparse.Namespace, summary: Summary) -> None:
        self.args = args
        self.summary = summary  # since the last interval summary
        self.whole = Summary()  # the whole run, for the final summary
        self.lock = threading.Lock()

    def __call__(self, ev: Event) -> None:
        with self.lock:
            self.summary.feed(ev)
            self.whole.feed(ev)
            if not (self.args.all or interesting(ev)):
                return
            # Not flushed line by line (the flusher thread does it every 0.2 s): a flush is a
            # write, 2.4 ms a line into the guest's 9p-shared results/ under TCG (measured),
            # which made draining the demo's failures take minutes. A terminal is
            # line-buffered anyway.
            if self.args.json:
                print(json.dumps(escape_all(ev.to_dict()), default=str))
                return
            when = (time.strftime("%H:%M:%S", time.localtime(self.t0 + ev.ts))
                    if self.args.timestamp else f"{ev.ts:.6f}")
            print(FMT.format(when, escape(ev.comm[:15]), ev.pid, ev.name,
                             (ev.reason or "-")[:17], ev.range_text(),
                             escape(ev.owner_label())))

    def flush(self) -> None:
        with self.lock:
            sys.stdout.flush()

    def start_flushing(self, every: float = 0.2) -> None:
        """Flush the lines every ``every`` s on a thread of its own. Never on the main
        thread: Ctrl-C's KeyboardInterrupt landing inside a flush makes TextIOWrapper drop
        the bytes it was handing down (measured: a JSON line cut short, the next glued on)."""
        def run() -> None:
            while not self._done.wait(every):
                try:
                    self.flush()
                except (OSError, ValueError):  # stdout closed (| head): nothing to flush to
                    return

        self._done = threading.Event()
        self._flusher = threading.Thread(target=run, name="rdmapin-flush", daemon=True)
        self._flusher.start()

    def stop_flushing(self) -> None:
        if self._flusher is not None:
            self._done.set()
            self._flusher.join()
            self._flusher = None

    t0 = 0.0
    _flusher: threading.Thread | None = None


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from rdmapin.trace.tracer import Tracer

    if args.explain:
        return explain(args)
    # Detach cleanly on SIGINT and SIGTERM (systemd, kill) alike; set explicitly because a
    # shell starts background jobs with SIGINT ignored, which Python would inherit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    summary = Summary()
    printer = Printer(args, summary)
    tracer = Tracer(pid=args.pid, inventory=args.inventory, keep_events=0, on_event=printer)
    try:
        tracer.start()
    except ImportError as e:
        raise RdmapinError(f"bcc is not importable ({e})",
                           hint="install python3-bpfcc; run with the system Python") from e
    printer.t0 = tracer.started
    printer.start_flushing()
    exporter = None
    try:
        if tracer.unavailable:
            print(f"rdmapin: trace: {tracer.unavailable}", file=sys.stderr)
        if tracer.inventory is not None:
            inv = tracer.inventory
            print(f"rdmapin: trace: {len(inv.owners)} pinned range(s) found at start"
                  + (f"; {len(inv.unresolved)} unplaced: "
                     + "; ".join(map(escape, inv.unresolved))
                     if inv.unresolved else ""), file=sys.stderr)
        if args.prometheus:
            from rdmapin.trace import prometheus
            exporter = prometheus.serve(*args.prometheus, tracer.totals,
                                        printer.whole.failures_by_owner)
        if not args.json:
            print(FMT.format(*(("TIME", *HEADER[1:]) if args.timestamp else HEADER)))
        print("Hit Ctrl-C to end.", file=sys.stderr)
        _loop(args, tracer, printer)
    except KeyboardInterrupt:
        pass
    finally:
        if exporter is not None:
            from rdmapin.trace import prometheus
            prometheus.stop(exporter)
        tracer.stop()
        printer.stop_flushing()
    _final(args, tracer, printer)
    lost = tracer.totals().get("lost_events", 0)
    if lost:
        print(f"rdmapin: trace: {lost} events lost (the buffer was full); totals are exact, "
              "the event list is not", file=sys.stderr)
    return 0


def _loop(args: argparse.Namespace, tracer: object, printer: Printer) -> None:
    start = time.monotonic()
    last = start
    prev = tracer.totals()
    while True:
        now = time.monotonic()
        if args.duration is not None and now - start >= args.duration:
            return
        wait = 0.2
        if args.duration is not None:
            wait = min(wait, max(0.0, start + args.duration - now))
        time.sleep(wait)
        if args.interval and time.monotonic() - last >= args.interval:
            last = time.monotonic()
            cur = tracer.totals()
            delta = {k: cur[k] - prev.get(k, 0) for k in cur}
            prev = cur
            with printer.lock:  # flushed by the flusher thread, like the event lines
                _emit(args, printer.summary, delta, {}, time.strftime("%H:%M:%S"))
                printer.summary.reset()


def _emit(args: argparse.Namespace, s: Summary, totals: dict, hists: dict, title: str) -> None:
    if args.json:
        print(json.dumps(escape_all({"summary": title, **s.to_dict(totals, hists)}),
                         default=str))
    else:
        print(render(s, totals, hists, title))


def _final(args: argparse.Namespace, tracer: object, printer: Printer) -> None:
    with printer.lock:
        _emit(args, printer.whole, tracer.totals(), tracer.histograms(), "summary")
        sys.stdout.flush()
