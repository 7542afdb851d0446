"""`rdmapin fragmap`: physical memory by 2 MiB pageblock and zone: free, movable,
unmovable kernel memory, and pinned by an MR."""

from __future__ import annotations

import argparse
import json
import sys

from rdmapin import mm
from rdmapin.cli import argtypes
from rdmapin.physmap import blocks, pins

EXAMPLES = """examples:
  rdmapin fragmap                  # per-zone pageblocks by class, what compaction could form
  rdmapin fragmap --png map.png    # the same as a picture, one cell per pageblock
  rdmapin fragmap -p 1234          # count only pins of pid 1234's MRs
  rdmapin fragmap -j               # JSON lines: one per zone, then a summary

Needs root: /proc/kpageflags is mode 0400 and PFNs in pagemap need CAP_SYS_ADMIN.
"""

HEADER = (f"{'ZONE':<11}{'BLOCKS':>7}{'FREE':>7}{'MOVBL':>7}{'HUGE':>6}{'NOFLG':>7}"
          f"{'UNMOV':>7}{'PINND':>7}{'HOLE':>7}")
HEADER2 = f"{'ZONE':<11}{'2M-NOW':>8}{'CLEAN':>8}{'2M-MAX':>8}{'PINNED-BLK':>11}{'LOST':>7}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fragmap", help="map physical memory by pageblock: free, movable, "
                                       "unmovable, pinned",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--png", type=argtypes.output_file, metavar="FILE",
                   help="also draw the map into FILE (matplotlib)")
    p.add_argument("-j", "--json", action="store_true", help="JSON lines with stable keys")
    p.add_argument("-p", "--pid", type=argtypes.positive_int,
                   help="pins of this process's MRs only")
    p.add_argument("--no-pins", action="store_true",
                   help="skip the MR inventory (kpageflags classes only)")
    p.set_defaults(func=run)


def _progress() -> object:
    if not sys.stderr.isatty():
        return None

    def tick(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        bar = "#" * (pct // 4)
        sys.stderr.write(f"\rreading /proc/kpageflags [{bar:<25}] {pct:3d}%")
        if done >= total:
            sys.stderr.write("\r" + " " * 60 + "\r")
        sys.stderr.flush()
    return tick


def render_text(pmap: blocks.PhysMap) -> list[str]:
    mib = pmap.pages_per_block * mm.PAGE_SIZE >> 20
    t = pmap.totals()
    out = [f"PAGEBLOCKS ({mib} MiB, order {pmap.order}) BY WORST PAGE", HEADER]
    for s in pmap.summaries:
        b = s.pageblocks
        out.append(f"{s.zone.label:<11}{sum(b.values()):>7}{b['free']:>7}{b['movable']:>7}"
                   f"{b['hugetlb']:>6}{b['noflags']:>7}{b['unmovable']:>7}{b['pinned']:>7}"
                   f"{b['hole']:>7}")
    out += ["", f"{mib} MiB PAGES: NOW, AND IF EVERY MOVABLE PAGE MOVED", HEADER2]
    for s in pmap.summaries:
        out.append(f"{s.zone.label:<11}{s.free_2m:>8}{s.clean:>8}{s.formable_2m:>8}"
                   f"{s.pinned_blocks:>11}{s.lost_to_pins:>7}")
    out += [
        "",
        f"{t['free_2m']} free {mib} MiB pages now; {t['clean']} pageblocks hold no "
        "unmovable or pinned page,",
        f"so up to {t['formable_2m']} if every movable page moved (capped by free "
        "memory).",
        f"pinned: {t['pinned_pages']} pages ({len(pmap.pins.sources)} MRs or ranges) in "
        f"{t['pinned_blocks']} pageblocks; {t['lost_to_pins']} of those",
        "pageblocks could be compacted but for the pins.",
        "NOFLG: pages with no flag at all (raw kernel allocations, per-CPU free lists,",
        "memory deferred init has not reached yet); compaction cannot move them.",
    ]
    out += [f"note: {n}" for n in pmap.pins.notes]
    return out


def run(args: argparse.Namespace) -> int:
    pinset = pins.PinSet() if args.no_pins else pins.collect(args.pid)
    pmap = blocks.build(pinset, progress=None if args.json else _progress())
    if args.json:
        for s in pmap.summaries:
            sys.stdout.write(json.dumps(s.to_dict(), sort_keys=True) + "\n")
        sys.stdout.write(json.dumps(pmap.totals(), sort_keys=True) + "\n")
    else:
        sys.stdout.write("\n".join(render_text(pmap)) + "\n")
    if args.png:
        from rdmapin.physmap import plot
        path = plot.render(pmap, args.png)
        print(f"wrote {path}", file=sys.stderr)
    return 0
