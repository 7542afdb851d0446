"""`rdmapin bench`: what registration costs here, rdmapin against pyverbs and the C floor."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rdmapin import bench
from rdmapin.cli import argtypes

EXAMPLES = """examples:
  rdmapin bench                          # per-op and us/MiB tables, progress on stderr
  rdmapin bench --plot results/bench.png # and a PNG of both
  rdmapin bench --sizes 64,256 --pages 4k,2m --rounds 5
  ci/vm/run --memory 3G --hugepages 600 -- rdmapin bench --plot results/bench.png
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure registration cost (per op and per MiB)",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--device", default="rxe0", help="RDMA device (default rxe0)")
    p.add_argument("--iters", type=argtypes.positive_int, default=500,
                   help="4 KiB reg+dereg per round")
    p.add_argument("--rounds", type=argtypes.positive_int, default=9,
                   help="alternating rounds per contender")
    p.add_argument("--sizes", type=_sizes, default="64,256,1024", metavar="MIB,...",
                   help="region sizes in MiB ('' for none; default 64,256,1024)")
    p.add_argument("--pages", type=_kinds, default="4k,thp,2m", metavar="KIND,...",
                   help="backings: 4k, thp, 2m, 1g (default 4k,thp,2m)")
    p.add_argument("--plot", type=argtypes.output_file, metavar="FILE",
                   help="write a PNG of the results")
    p.add_argument("-j", "--json", action="store_true", help="JSON lines instead of tables")
    p.set_defaults(func=run)


def _kinds(text: str) -> list[str]:
    """'4k,2m' -> the backings, each one rdmapin.alloc knows (checked before any work)."""
    from rdmapin.memory import KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, bad))}: expected backings "
                                         f"from {', '.join(KINDS)}")
    return kinds


def _sizes(text: str) -> list[int]:
    try:
        return [int(s) << 20 for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes {text!r}: expected MiB numbers like 64,256") from None


def plot(ops: list[bench.PerOp], rows: list[bench.Bulk], path: Path) -> None:
    """Left: us/MiB against region size per backing; right: per-op cost with ratio to C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in dict.fromkeys(r.pages for r in rows):
        pts = [(r.size >> 20, r.us_per_mib) for r in rows if r.pages == kind and r.us_per_mib]
        if pts:
            got = next(r.backing for r in rows if r.pages == kind and r.backing)
            left.plot(*zip(*pts, strict=True), marker="o", label=f"{kind} (got {got})")
    left.set_xscale("log", base=2)
    sizes = sorted({r.size >> 20 for r in rows})
    if sizes:
        left.set_xticks(sizes, [str(s) for s in sizes])
    left.set_xlabel("region size (MiB)")
    left.set_ylabel("ibv_reg_mr cost (us per MiB)")
    left.set_title("Registration cost by backing")
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend()
    floor = next((o.median for o in ops if o.name == "C floor"), None)
    if ops and floor:
        names = [o.name for o in ops]
        meds = [o.median for o in ops]
        bars = right.bar(names, meds, color=["#555555"] + ["#1f77b4"] * (len(ops) - 1))
        for b, m in zip(bars, meds, strict=True):
            right.annotate(f"{m:.0f} us\n{m / floor:.2f}x C", (b.get_x() + b.get_width() / 2, m),
                           ha="center", va="bottom", fontsize=9)
        right.set_ylabel("4 KiB reg+dereg (us/op, median round)")
        right.set_title("Per-op cost against the C floor")
        right.set_ylim(0, max(meds) * 1.3)
        right.tick_params(axis="x", labelrotation=15)
    else:
        right.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    kinds = args.pages if isinstance(args.pages, list) else _kinds(args.pages)
    ops, rows = bench.run(args.device, iters=args.iters, rounds=args.rounds,
                          sizes=args.sizes, kinds=kinds)
    if args.json:
        floor = next((o.median for o in ops if o.name == "C floor"), None)
        for o in ops:
            print(json.dumps({"kind": "per_op", "name": o.name, "median_us": o.median,
                              "best_us": o.best, "x_c": o.median / floor if floor else None,
                              "paired_x_c": o.paired_ratio, "rounds": o.rounds}, sort_keys=True))
        for r in rows:
            print(json.dumps({"kind": "bulk", "size": r.size, "pages": r.pages,
                              "backing": r.backing, "reg_us": r.reg_us,
                              "dereg_us": r.dereg_us, "us_per_mib": r.us_per_mib,
                              "skipped": r.skipped}, sort_keys=True))
    else:
        print(bench.render(ops, rows))
    if args.plot:
        plot(ops, rows, args.plot)
        print(f"rdmapin: plot written to {args.plot}", file=sys.stderr)
    return 0
