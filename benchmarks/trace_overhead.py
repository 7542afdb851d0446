#!/usr/bin/env python3
"""What watching costs: a migration storm with and without the tracer, in one run.

    ci/vm/run -- python benchmarks/trace_overhead.py                 # 256 MiB, 3 rounds
    ci/vm/run --memory 4G -- python benchmarks/trace_overhead.py --size 1G --rounds 3

SIZE of populated 4K anonymous memory is moved node 0 -> 1 -> 0 with move_pages(2) per
round; untraced and traced rounds alternate (A B A B ...) so drift hits both equally: one
compiled tracer, detached for plain rounds and attached for traced ones. Traced rounds run
the full tracer (every probe this kernel allows: mm_migrate_pages, the move_to_new_folio
kprobe+kretprobe on every folio, compaction, pins) with its event thread draining.
Reports the best and median round of each, the ratio (target <= 1.05), events/s delivered,
and lost events (target 0); checks the tracer's pgmigrate totals against /proc/vmstat for
the traced rounds.
"""

from __future__ import annotations

import argparse
import json
import mmap
import statistics
import sys
import time

import numpy as np

from rdmapin import mm
from rdmapin.kernel.units import parse_size
from rdmapin.trace import Tracer

PAGE = mm.PAGE_SIZE


def storm(addrs: np.ndarray) -> tuple[float, int]:
    """Move every page to node 1 and back; (seconds, pages moved)."""
    t0 = time.perf_counter()
    s1 = mm.move_pages(addrs, 1)
    s0 = mm.move_pages(addrs, 0)
    dt = time.perf_counter() - t0
    return dt, int((s1 == 1).sum() + (s0 == 0).sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=256 << 20, help="bytes (256M, 1G)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each mode")
    ap.add_argument("-j", "--json", action="store_true", help="one JSON object")
    args = ap.parse_args(argv)

    npages = args.size // PAGE
    buf = mmap.mmap(-1, npages * PAGE)
    arr = np.frombuffer(buf, dtype=np.uint8)
    mm.mbind(arr.ctypes.data, len(arr), 0)
    arr[::PAGE] = 1
    addrs = mm.page_addrs(arr.ctypes.data, len(arr))
    storm(addrs)  # warm: page tables, LRU, allocator on both nodes

    plain: list[float] = []
    traced: list[float] = []
    moved = 0
    count = [0]
    vm_ok = True
    traced_s = 0.0
    # One compiled tracer, detached (pause) for the plain rounds and attached (resume) for
    # the traced ones, interleaved A B A B so a noisy neighbour hits both modes alike.
    print("compiling and attaching the tracer", file=sys.stderr, flush=True)
    with Tracer(keep_events=0, inventory=False,
                on_event=lambda _ev: count.__setitem__(0, count[0] + 1)) as t:
        compile_note = t.unavailable or "all probes attached"
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            t.pause()
            plain.append(storm(addrs)[0])
            t.resume()
            v0, t0 = t.vmstat_and_totals()
            t_start = time.perf_counter()
            dt, n = storm(addrs)
            v1, t1 = t.vmstat_and_totals()
            t.poll(0)
            traced_s += time.perf_counter() - t_start
            traced.append(dt)
            moved += n
            vm_ok &= all((t1[k] - t0[k]) == (v1[k] - v0[k])
                         for k in ("pgmigrate_success", "pgmigrate_fail"))
    events = count[0]
    lost = t.totals()["lost_events"]

    best_p, best_t = min(plain), min(traced)
    med_p, med_t = statistics.median(plain), statistics.median(traced)
    result = {
        "size_bytes": args.size, "rounds": args.rounds, "pages_per_round": 2 * npages,
        "plain_best_s": best_p, "traced_best_s": best_t, "ratio_best": best_t / best_p,
        "plain_median_s": med_p, "traced_median_s": med_t, "ratio_median": med_t / med_p,
        "events": events, "events_per_s": events / traced_s if traced_s else 0.0,
        "folio_probe_hits_per_s": moved / sum(traced),
        "lost_events": lost, "totals_match_vmstat": vm_ok, "probes": compile_note,
    }
    if args.json:
        print(json.dumps(result))
        return 0 if lost == 0 and vm_ok else 1
    mib = args.size >> 20
    print(f"migration storm: {mib} MiB ({npages} pages) node 0 -> 1 -> 0, "
          f"{args.rounds} rounds each, interleaved")
    print(f"probes: {compile_note}")
    print(f"{'MODE':<8} {'BEST(s)':>9} {'MEDIAN(s)':>10} {'PAGES/s':>10} {'RATIO':>7}")
    print(f"{'plain':<8} {best_p:>9.3f} {med_p:>10.3f} {2 * npages / med_p:>10.0f} "
          f"{1.0:>7.3f}")
    print(f"{'traced':<8} {best_t:>9.3f} {med_t:>10.3f} {2 * npages / med_t:>10.0f} "
          f"{med_t / med_p:>7.3f}")
    print(f"events delivered: {events} ({result['events_per_s']:.0f}/s); "
          f"folios through the kprobe: {result['folio_probe_hits_per_s']:.0f}/s; "
          f"lost events: {lost}")
    print(f"tracer pgmigrate totals == /proc/vmstat deltas: {vm_ok}")
    del arr
    buf.close()
    return 0 if lost == 0 and vm_ok else 1


if __name__ == "__main__":
    sys.exit(main())
