#!/usr/bin/env python3
"""Registration cost: C floor vs rdmapin vs pyverbs per 4 KiB op, and us/MiB by backing.

    ci/vm/run --memory 3G --hugepages 600 -- python benchmarks/reg_cost.py
    python benchmarks/reg_cost.py --device rxe0 --iters 1000 --rounds 15 --sizes 64,256
"""

from __future__ import annotations

import argparse
import sys

from rdmapin import bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="rxe0")
    p.add_argument("--iters", type=int, default=500, help="4 KiB reg+dereg per round")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--sizes", default="64,256,1024", help="MiB, comma-separated ('' = none)")
    p.add_argument("--pages", default="4k,thp,2m", help="backings, comma-separated")
    a = p.parse_args(argv)
    sizes = [int(s) << 20 for s in a.sizes.split(",") if s]
    ops, rows = bench.run(a.device, iters=a.iters, rounds=a.rounds, sizes=sizes,
                          kinds=[k for k in a.pages.split(",") if k])
    print(bench.render(ops, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
