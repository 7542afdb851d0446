"""`rdmapin exporter`: an always-on Prometheus exporter of pinned memory and what it costs the
kernel, one per host, scraped by the fleet's Prometheus (or written for node_exporter's
textfile collector).

Per process (the --top most pinned, the rest as pid="other"): pinned, locked and memlock-limit
bytes, MRs and their bytes per device, pinned bytes by backing, DMA blocks per device page
size. Per zone: free 2 MiB blocks now and reachable if every movable page moved, pageblocks
lost to pins. doctor's checks, the global FOLL_PIN count, the tracer's counters (migration
failures by reason and owner) and rdmapin_tracer_up, and when each scan last ran. Scans run on
their intervals and every scrape gets the last one: scrapes never trigger a scan.
SIGTERM and SIGINT detach the tracer and stop cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from rdmapin.cli import argtypes

EXAMPLES = """examples:
  rdmapin exporter                               # http://127.0.0.1:9464/metrics
  rdmapin exporter --listen 198.51.100.1:9464    # reachable by that network (a warning says so)
  rdmapin exporter --textfile /var/lib/node_exporter/textfile   # rdmapin.prom for node_exporter
  rdmapin exporter --no-trace --interval 5       # gauges only (no bcc, no root needed)
  rdmapin exporter --listen 127.0.0.1:0          # any free port (printed on stderr)

Defaults: scans every 15 s, zones (a whole-memory /proc/kpageflags read) and doctor's checks
every 300 s, the 10 most pinned processes with series of their own. --textfile alone serves
no HTTP; give --listen too for both. Without root, the processes whose pages it may not read
are counted (rdmapin_scan_unreadable_processes), the zones scan fails (counted in
rdmapin_scan_errors_total) and the rest serves. The metrics are listed in the README.
"""

DEFAULT_LISTEN = ("127.0.0.1", 9464)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exporter", help="always-on Prometheus exporter (HTTP or textfile)",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=argtypes.listen_address, metavar="HOST:PORT",
                   help="serve /metrics here (default 127.0.0.1:9464 unless --textfile; "
                        "port 0: any free port)")
    p.add_argument("--textfile", type=argtypes.writable_dir, metavar="DIR",
                   help="write DIR/rdmapin.prom atomically after every scan")
    p.add_argument("--interval", type=argtypes.positive_float, default=15.0, metavar="S",
                   help="seconds between process scans (default 15)")
    p.add_argument("--slow-interval", type=argtypes.positive_float, default=300.0,
                   metavar="S", help="seconds between zone and doctor scans (default 300)")
    p.add_argument("--top", type=argtypes.positive_int, default=10, metavar="N",
                   help="processes (and tracer owners) with series of their own; the rest "
                        "add up as pid=\"other\" (default 10)")
    p.add_argument("--no-trace", dest="trace", action="store_false",
                   help="no tracer: gauges only (rdmapin_tracer_up 0)")
    p.set_defaults(func=run)


def _note(line: str) -> None:
    print(f"rdmapin: exporter: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from rdmapin.exporter.http import MetricsServer, is_loopback
    from rdmapin.exporter.service import Exporter

    listen = args.listen or (None if args.textfile else DEFAULT_LISTEN)
    stop = threading.Event()

    def _stop(_sig: int, _frame: object) -> None:
        stop.set()

    # Set explicitly: a shell starts background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    server = None
    if listen is not None:
        server = MetricsServer(*listen, body=lambda: exporter.exposition())
        if not is_loopback(listen[0]):
            print(f"rdmapin: warning: listening on {listen[0]}: the metrics (process names, "
                  "pids, memory layout) are exposed to every host that reaches it; use "
                  "127.0.0.1 unless you mean it", file=sys.stderr)
    exporter = Exporter(interval=args.interval, slow_interval=args.slow_interval, top=args.top,
                        trace=args.trace, textfile_dir=args.textfile, note=_note)
    exporter.start()
    try:
        if server is not None:
            server.start()
            _note(f"serving {server.url}")
        if args.textfile:
            _note(f"writing {args.textfile}/rdmapin.prom")
        _note("Ctrl-C or SIGTERM to stop")
        while not stop.wait(0.5):
            pass
    finally:
        if server is not None:
            server.stop()
        exporter.stop()
    _note("stopped")
    return 0
