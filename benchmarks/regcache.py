#!/usr/bin/env python3
"""The registration cache's cost, as ratios against floors measured in the same run.

    ci/vm/run --memory 3G -- python benchmarks/regcache.py
    python benchmarks/regcache.py --iters 2000 --rounds 7 --transfers 2000

- hit: cache.get((addr, len)) + release, against the same loop making the same number (2)
  of calls into a shim function that does nothing;
- miss: get on a range never seen + release, against pd.register of the same ranges (the
  deregistrations of both are outside the timing);
- register_many: 1000 x 4 KiB registered in one call and closed, per MR, against the C
  floor's reg+dereg loop (csrc/reg_floor.c) on the same PD;
- source alone: UFFDIO_REGISTER of the same ranges and the pagemap read that tells shared
  memory apart, the invalidation source's share of a miss; the miss's target is taken
  without it ((miss - source) / register): the source is reported apart;
- reuse: transfers over 256 buffers of 4 KiB-4 MiB drawn with a Zipf law, each registered
  per transfer (register/close) or taken from the cache, RDMA WRITEs of up to 64 KiB over
  a loopback QP pair; the hit rate.
Each timed round runs every contender once, rotated; medians of the per-round ratios.
A table on stdout, a plot in results/regcache.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rdmapin
from rdmapin import _lib, bench
from rdmapin.access import Access

RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
PAGE = 4096
TOP = Path(__file__).resolve().parents[1]


def hit_round(cache, addr: int, iters: int) -> float:
    get, req, access = cache.get, (addr, PAGE), int(RW)
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        get(req, access).release()
    return (time.perf_counter_ns() - t0) / iters / 1e3


def noop_round(iters: int) -> float:
    noop = _lib.lib.rdmapin_noop
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        noop()
        noop()
    return (time.perf_counter_ns() - t0) / iters / 1e3


def miss_round(cache, base: int, iters: int) -> float:
    get, access = cache.get, int(RW)
    t0 = time.perf_counter_ns()
    for i in range(iters):
        get((base + 2 * i * PAGE, PAGE), access).release()
    us = (time.perf_counter_ns() - t0) / iters / 1e3
    cache.flush()
    return us


def register_round(pd, base: int, iters: int) -> float:
    register, access = pd.register, int(RW)
    t0 = time.perf_counter_ns()
    mrs = [register((base + 2 * i * PAGE, PAGE), access) for i in range(iters)]
    us = (time.perf_counter_ns() - t0) / iters / 1e3
    for m in mrs:
        m.close()
    return us


def source_round(base: int, iters: int, pagemap: int) -> float:
    """What the invalidation source adds to a miss's registration: watching the range
    (UFFDIO_REGISTER) and the pagemap read that tells shared memory (no events) apart."""
    reg, unreg = _lib.lib.rdmapin_uffd_register, _lib.lib.rdmapin_uffd_unregister
    ioctls = _lib.ffi.new("uint64_t *")
    pread = os.pread
    t0 = time.perf_counter_ns()
    for i in range(iters):
        reg(base + 2 * i * PAGE, PAGE, ioctls)
        pread(pagemap, 8, (base + 2 * i * PAGE) // PAGE * 8)
    us = (time.perf_counter_ns() - t0) / iters / 1e3
    for i in range(iters):
        unreg(base + 2 * i * PAGE, PAGE)
    return us


def many_round(pd, bufs, _iters: int) -> float:
    t0 = time.perf_counter_ns()
    mrs = pd.register_many(bufs, RW)
    for m in mrs:
        m.close()
    return (time.perf_counter_ns() - t0) / len(bufs) / 1e3


def zipf_workload(pd, ctx, vpd, transfers: int, cached: bool, seed: int = 5
                  ) -> tuple[float, float]:
    """(us per transfer, hit rate) of `transfers` RDMA WRITEs drawn over 256 buffers."""
    from loopback import LoopbackPair

    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(4096), np.log(4 << 20), 256)).astype(np.int64)
    bufs = [rdmapin.alloc(int(s)) for s in sizes]
    picks = np.minimum(rng.zipf(1.2, transfers) - 1, 255)
    dst = rdmapin.alloc(64 * 1024)
    pair = LoopbackPair(ctx, vpd)
    cache = pd.cache() if cached else None
    try:
        with pd.register(dst, RW) as dmr:
            t0 = time.perf_counter_ns()
            for k in picks:
                b = bufs[k]
                n = min(len(b), 64 * 1024)
                if cache is not None:
                    with cache.get(b, RW) as h:
                        pair.write(h.addr, n, h.lkey, dmr.addr, dmr.rkey)
                else:
                    with pd.register(b, RW) as m:
                        pair.write(m.addr, n, m.lkey, dmr.addr, dmr.rkey)
            us = (time.perf_counter_ns() - t0) / transfers / 1e3
        rate = cache.stats().hit_rate if cache is not None else 0.0
    finally:
        if cache is not None:
            cache.close()
        pair.close()
    return us, rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="rxe0")
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--transfers", type=int, default=10000)
    p.add_argument("--plot", type=Path, default=TOP / "results" / "regcache.png")
    a = p.parse_args(argv)
    sys.path.insert(0, str(TOP / "tests"))
    from pyverbs.device import Context
    from pyverbs.pd import PD

    with tempfile.TemporaryDirectory() as tmp, Context(name=a.device) as ctx, PD(ctx) as vpd:
        _, so = bench.build_floor(Path(tmp))
        c_loop = bench.floor_loop(so)
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        space = rdmapin.alloc(2 * a.iters * PAGE)  # misses: a fresh page every 2 pages
        one = rdmapin.alloc(PAGE)
        smalls = [rdmapin.alloc(PAGE) for _ in range(1000)]
        cache = pd.cache()
        cache.get((one.addr, PAGE), RW).release()  # the hit's MR
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        contenders = {
            "hit (get+release)": lambda n: hit_round(cache, one.addr, n),
            "2 empty shim calls": noop_round,
            "miss (get+release)": lambda n: miss_round(cache, space.addr, n),
            "register": lambda n: register_round(pd, space.addr, n),
            "source alone": lambda n: source_round(space.addr, n, pagemap),
            "register_many/MR": lambda n: many_round(pd, smalls, n),
            "C floor reg+dereg": lambda n: c_loop(pd, one.addr, n),
        }
        rows = {k: bench.PerOp(k) for k in contenders}
        names = list(contenders)
        for name in names:
            contenders[name](max(a.iters // 10, 10))  # warm-up
        for r in range(a.rounds):
            bench.progress(f"round {r + 1}/{a.rounds} ({a.iters} ops per contender)")
            k = r % len(names)
            for name in names[k:] + names[:k]:
                rows[name].rounds.append(contenders[name](a.iters))

        def ratio(x: str, y: str, less: str | None = None) -> float:
            minus = rows[less].rounds if less else [0.0] * a.rounds
            return statistics.median((p - m) / q for p, q, m in zip(
                rows[x].rounds, rows[y].rounds, minus, strict=True))

        ratios = [("hit / 2 empty shim calls", ratio("hit (get+release)", "2 empty shim calls"),
                   1.5),
                  ("miss / register", ratio("miss (get+release)", "register"), None),
                  ("(miss - source) / register",
                   ratio("miss (get+release)", "register", "source alone"), 1.1),
                  ("source alone / register", ratio("source alone", "register"), None),
                  ("register_many per MR / C floor",
                   ratio("register_many/MR", "C floor reg+dereg"), 1.1)]
        cache.close()
        os.close(pagemap)
        bench.progress(f"reuse workload: {a.transfers} transfers, with and without the cache")
        plain_us, _ = zipf_workload(pd, ctx, vpd, a.transfers, cached=False)
        cached_us, rate = zipf_workload(pd, ctx, vpd, a.transfers, cached=True)
        pd.close()
    print(f"{'contender':<24}{'median us/op':>14}{'best':>10}")
    for row in rows.values():
        print(f"{row.name:<24}{row.median:>14.2f}{row.best:>10.2f}")
    print(f"\n{'ratio (median of rounds)':<34}{'value':>8}{'target':>8}")
    for name, value, target in ratios:
        mark = "" if target is None else f"<={target}"
        print(f"{name:<34}{value:>8.2f}{mark:>8}")
    print(f"\nreuse, {a.transfers} transfers over 256 Zipf-drawn buffers of 4 KiB-4 MiB: "
          f"register per transfer {plain_us:.0f} us, cache {cached_us:.0f} us "
          f"({plain_us / cached_us:.1f}x), hit rate {rate:.1%}")
    plot(a.plot, ratios, plain_us, cached_us, rate)
    return 0


def plot(path: Path, ratios, plain_us: float, cached_us: float, rate: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [n for n, _, _ in ratios]
    ax1.barh(names, [v for _, v, _ in ratios], color="tab:blue")
    for i, (_, _, t) in enumerate(ratios):
        if t is not None:
            ax1.plot([t, t], [i - 0.4, i + 0.4], color="tab:red")
    ax1.set_xlabel("ratio (red: target)")
    ax1.set_title("registration cache vs floors, same run")
    ax2.bar(["register per transfer", "cache"], [plain_us, cached_us],
            color=["tab:gray", "tab:green"])
    ax2.set_ylabel("us per transfer")
    ax2.set_title(f"Zipf reuse, hit rate {rate:.0%}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
