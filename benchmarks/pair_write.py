#!/usr/bin/env python3
"""RDMA WRITE between two hosts: bandwidth and latency through rdmapin MRs and pyverbs MRs.

    ci/vm/pair -- python benchmarks/pair_write.py                # both guests run it
    ci/vm/pair -- python benchmarks/pair_write.py --rounds 9 --sizes 1K,64K,16M

Guest a writes into guest b over rxe2 (one RC QP, the pair tests' QP settings). Each side
has a 16 MiB buffer registered by rdmapin (``pd.register`` of ``rdmapin.empty``, 4k pages)
and one registered by pyverbs (``pyverbs.mr.MR``, its own 4k allocation), in one pyverbs PD;
a's rdmapin MR writes into b's rdmapin MR, a's pyverbs MR into b's pyverbs MR. Per size:
latency is the median time of one signalled write (post, then spin on the CQ) and bandwidth
the bytes of a burst of writes (up to DEPTH in flight) over its time. Rounds interleave the
two kinds (A B, then B A, ...) so drift hits both; reported are the medians over rounds, the
ratio rdmapin/pyverbs (the median of per-round ratios) and the noise: the spread (max - min)
of one kind's rounds over its median, in percent. The data path does not depend on who
registered the MR, so the ratio should be 1 within that noise. Table on a's stdout, JSON and
a PNG in --out (default RESULTS/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vm"))

from pair_util import DEVICE, PEER, ROLE, SELF, RcQp

import rdmapin
from rdmapin import rendezvous
from rdmapin.kernel.units import human, parse_size

BUF = 16 << 20
DEPTH = 8
KINDS = ("rdmapin", "pyverbs")


@dataclass
class Region:
    """What a work request needs of an MR, whoever registered it."""

    addr: int
    lkey: int
    rkey: int
    length: int


def burst(qp: RcQp, mr: Region, remote: rdmapin.rendezvous.RemoteMR, size: int,
          count: int) -> float:
    """Seconds for ``count`` writes of ``size`` with up to DEPTH in flight."""
    posted = done = 0
    t0 = time.perf_counter()
    while done < count:
        while posted < count and posted - done < DEPTH:
            off = posted * size % (BUF - size + 1) // 4096 * 4096
            qp.write(mr, off, size, remote, off)
            posted += 1
        qp.wait(spin=True)
        done += 1
    return time.perf_counter() - t0


def latency(qp: RcQp, mr: Region, remote, size: int, count: int) -> float:
    """Median seconds of one write, posted alone."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        qp.write(mr, 0, size, remote)
        qp.wait(spin=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(qp, mine: dict[str, Region], theirs, sizes: list[int], rounds: int) -> dict:
    """{kind: {size: {"bw": [per round], "lat": [per round]}}}"""
    out = {k: {s: {"bw": [], "lat": []} for s in sizes} for k in KINDS}
    for r in range(rounds):
        order = KINDS if r % 2 == 0 else KINDS[::-1]
        for kind in order:
            for size in sizes:
                count = max(DEPTH, min(256, (32 << 20) // size))
                dt = burst(qp, mine[kind], theirs[kind], size, count)
                out[kind][size]["bw"].append(size * count / dt)
                out[kind][size]["lat"].append(
                    latency(qp, mine[kind], theirs[kind], size, 20 if size <= 1 << 20 else 3))
        print(f"pair_write: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return out


def summarise(raw: dict, sizes: list[int]) -> list[dict]:
    rows = []
    for size in sizes:
        row = {"size": size}
        for metric in ("bw", "lat"):
            for kind in KINDS:
                vals = raw[kind][size][metric]
                med = statistics.median(vals)
                row[f"{kind}_{metric}"] = med
                row[f"{kind}_{metric}_noise_pct"] = 100 * (max(vals) - min(vals)) / med
            ratios = [a / b for a, b in zip(raw["rdmapin"][size][metric],
                                            raw["pyverbs"][size][metric], strict=True)]
            row[f"ratio_{metric}"] = statistics.median(ratios)
        rows.append(row)
    return rows


def render(rows: list[dict], rounds: int) -> str:
    head = (f"{'SIZE':>7} {'RDMAPIN MB/s':>12} {'PYVERBS MB/s':>12} {'RATIO':>5} {'NOISE%':>11}"
            f" {'RDMAPIN us':>10} {'PYVERBS us':>10} {'RATIO':>5} {'NOISE%':>11}")
    lines = [f"RDMA WRITE a -> b over rxe2, medians of {rounds} interleaved rounds "
             "(noise: max-min of the rounds over the median, rdmapin/pyverbs)", head]
    for r in rows:
        lines.append(
            f"{human(r['size']):>7} {r['rdmapin_bw'] / 1e6:>12.1f} {r['pyverbs_bw'] / 1e6:>12.1f}"
            f" {r['ratio_bw']:>5.2f} {r['rdmapin_bw_noise_pct']:>5.0f}/"
            f"{r['pyverbs_bw_noise_pct']:<5.0f} {r['rdmapin_lat'] * 1e6:>10.0f}"
            f" {r['pyverbs_lat'] * 1e6:>10.0f} {r['ratio_lat']:>5.2f}"
            f" {r['rdmapin_lat_noise_pct']:>5.0f}/{r['pyverbs_lat_noise_pct']:<5.0f}")
    return "\n".join(lines)


def plot(raw: dict, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, scale, label in ((axes[0], "bw", 1e-6, "bandwidth, MB/s"),
                                     (axes[1], "lat", 1e6, "latency of one write, us")):
        for kind, marker in zip(KINDS, "os", strict=True):
            med = [statistics.median(raw[kind][s][metric]) * scale for s in sizes]
            lo = [m - min(raw[kind][s][metric]) * scale for m, s in zip(med, sizes, strict=True)]
            hi = [max(raw[kind][s][metric]) * scale - m for m, s in zip(med, sizes, strict=True)]
            ax.errorbar(sizes, med, yerr=[lo, hi], marker=marker, capsize=3, label=f"{kind} MR")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [human(s) for s in sizes], rotation=45)
        ax.set_xlabel("write size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("RDMA WRITE between two TCG guests (rxe2): rdmapin vs pyverbs MRs "
                 "(median, bars: min-max of rounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="1K,4K,16K,64K,256K,1M,4M,16M")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("RDMAPIN_RESULTS", ".")))
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if ROLE not in ("a", "b"):
        ap.error("run it in both guests of ci/vm/pair (RDMAPIN_ROLE a or b)")
    if max(sizes) > BUF:
        ap.error(f"sizes up to {human(BUF)}")

    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD

    access = rdmapin.Access.LOCAL_WRITE | rdmapin.Access.REMOTE_WRITE
    with Context(name=DEVICE) as ctx, PD(ctx) as vpd:
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        arr = rdmapin.empty(BUF, "uint8")
        arr[:] = 1
        rmr = pd.register(arr, access)
        vmr = MR(vpd, BUF, int(access))
        mine = {"rdmapin": Region(rmr.addr, rmr.lkey, rmr.rkey, rmr.length),
                "pyverbs": Region(vmr.buf, vmr.lkey, vmr.rkey, vmr.length)}
        qp = RcQp(ctx, vpd, depth=DEPTH * 2)
        ch = (rendezvous.serve(SELF, timeout=600) if ROLE == "a"
              else rendezvous.connect(PEER, timeout=600))
        try:
            there = ch.endpoint(qp.endpoint(rdmapin=rmr, pyverbs=mine["pyverbs"]))
            qp.connect(there)
            ch.exchange("connected")
            if ROLE == "b":
                ch.recv("done", timeout=24 * 3600)
                return 0
            raw = measure(qp, mine, there.mrs, sizes, args.rounds)
            ch.send("done", None)
        finally:
            ch.close()
            qp.close()
            vmr.close()
            pd.close()
    rows = summarise(raw, sizes)
    print(render(rows, args.rounds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pair_write.json").write_text(json.dumps(
        {"rounds": args.rounds, "rows": rows,
         "raw": {k: {str(s): v for s, v in d.items()} for k, d in raw.items()}}, indent=1))
    try:
        plot(raw, sizes, args.out / "pair_write.png")
        print(f"plot: {args.out / 'pair_write.png'}")
    except ImportError:
        print("plot: skipped (matplotlib missing: pip install rdmapin[tools])", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
