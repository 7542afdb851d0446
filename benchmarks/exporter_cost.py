#!/usr/bin/env python3
"""What `rdmapin exporter` costs: its scans, a scrape, and its share of a CPU, in one run.

    ci/vm/run -- python benchmarks/exporter_cost.py                  # 100 holders x 10 MRs
    ci/vm/run -- python benchmarks/exporter_cost.py --holders 20 --window 10 --plot x.png

HOLDERS small C processes (csrc/mr_holder.c, compiled here) each register MRS MRs of SIZE
bytes on rxe0. With 0, 1/4, 1/2 and all of them running, the process scan (every pid's
status, the kernel's MR list, each pinner's pinned pages, backing and DMA blocks) is timed
in this process, next to its floor: reading every /proc/PID/status as bytes and nothing else.
With all of them: the zones scan (a whole-memory kpageflags read), doctor's checks, and the
render of one exposition. Then the exporter runs as a process of its own (--no-trace) and is
scraped: back-to-back scrapes time one scrape (target: <= 10% of a 1 s scrape interval), and
a WINDOW of 1 s scrapes measures its CPU share (utime+stime of /proc/PID/stat over wall time),
with a scan every 1 s (scans as often as scrapes) and every 15 s (the default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rdmapin.exporter import families, scan
from rdmapin.kernel import procfs

TOP = Path(__file__).resolve().parents[1]
HOLDER = TOP / "csrc" / "mr_holder.c"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_holder(outdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("exporter_cost: no C compiler (apt-get install gcc libibverbs-dev)")
    exe = outdir / "mr_holder"
    subprocess.run([cc, "-O2", "-o", str(exe), str(HOLDER), "-libverbs"], check=True)
    return exe


def start_holders(exe: Path, n: int, mrs: int, size: int, device: str
                  ) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        p = subprocess.Popen([str(exe), device, str(mrs), str(size)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        if p.stdout.readline().strip() != "ready":
            sys.exit(f"exporter_cost: holder {i} failed (exit {p.wait()})")
        procs.append(p)
        if (i + 1) % 10 == 0:
            say(f"  {i + 1}/{n} holders")
    return procs


def stop_holders(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.stdin.close()
    for p in procs:
        p.wait()


def timed(fn, rounds: int) -> tuple[float, object]:
    """(median seconds, last result) of ``rounds`` calls."""
    times, result = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def status_floor() -> int:
    """Read every /proc/PID/status as bytes (what any per-process scan must at least do)."""
    n = 0
    for pid in procfs.pids():
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                f.read()
            n += 1
        except OSError:
            pass
    return n


def cpu_seconds(pid: int) -> float:
    st = procfs.stat(pid)
    return st.utime + st.stime


def exporter_run(interval: float, window: float, top: int, burst: int,
                 keep: Path | None = None) -> dict:
    """Start the exporter; time ``burst`` back-to-back scrapes, then scrape every 1 s for
    ``window`` s measuring its CPU share."""
    proc = subprocess.Popen([sys.executable, "-m", "rdmapin", "exporter", "--no-trace",
                             "--listen", "127.0.0.1:0", "--interval", str(interval),
                             "--slow-interval", "3600", "--top", str(top)],
                            stderr=subprocess.PIPE, text=True, cwd=TOP)
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line:
                sys.exit(f"exporter_cost: the exporter exited ({proc.wait()})")
            if "serving " in line:
                url = line.split("serving ", 1)[1].strip()
        while b"rdmapin_scan_duration_seconds{" not in urllib.request.urlopen(url).read():
            time.sleep(0.2)  # the first process scan
        time.sleep(3)  # the slow loop's first zones and doctor scans run once; let them
        scrapes, size = [], 0
        for _ in range(burst):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url) as r:
                body = r.read()
            scrapes.append(time.perf_counter() - t0)
            size = len(body)
        if keep is not None:
            keep.write_bytes(body)
        c0, w0 = cpu_seconds(proc.pid), time.monotonic()
        paced = []
        nxt = time.monotonic()
        while time.monotonic() - w0 < window:
            t0 = time.perf_counter()
            with urllib.request.urlopen(url) as r:
                r.read()
            paced.append(time.perf_counter() - t0)
            nxt += 1.0
            time.sleep(max(0.0, nxt - time.monotonic()))
        share = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - w0)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    return {"interval_s": interval, "scrape_ms_median": 1e3 * statistics.median(scrapes),
            "scrape_ms_p95": 1e3 * sorted(scrapes)[int(0.95 * (len(scrapes) - 1))],
            "scrape_ms_paced_median": 1e3 * statistics.median(paced),
            "scrape_bytes": size, "cpu_share": share, "scrapes": scrapes}


def plot(path: Path, ladder: list[dict], runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["pinners"] for r in ladder]
    a.plot(xs, [r["scan_s"] for r in ladder], "o-", label="process scan")
    a.plot(xs, [r["floor_s"] for r in ladder], "s--", label="floor: read every status")
    a.set_xlabel("processes holding MRs")
    a.set_ylabel("seconds per scan")
    a.legend()
    a.set_title("scan cost")
    for run in runs:
        b.hist([1e3 * s for s in run["scrapes"]], bins=20, alpha=0.6,
               label=f"scan every {run['interval_s']:g} s")
    b.axvline(100, color="r", ls=":", label="10% of a 1 s interval")
    b.set_xlabel("ms per scrape")
    b.set_ylabel("scrapes")
    b.legend()
    b.set_title("scrape cost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holders", type=int, default=100)
    ap.add_argument("--mrs", type=int, default=10, help="MRs per holder")
    ap.add_argument("--size", type=int, default=64 << 10, help="bytes per MR")
    ap.add_argument("--device", default="rxe0")
    ap.add_argument("--rounds", type=int, default=3, help="scans timed per step")
    ap.add_argument("--window", type=float, default=30.0, help="seconds of 1 s scrapes")
    ap.add_argument("--burst", type=int, default=50, help="back-to-back scrapes timed")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--plot", type=Path, help="PNG of scan and scrape cost")
    ap.add_argument("--scrape", type=Path, help="keep one scrape (exposition text) here")
    ap.add_argument("-j", "--json", action="store_true", help="one JSON object")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="exporter-cost-"))
    exe = build_holder(work)
    holders: list[subprocess.Popen] = []
    ladder = []
    try:
        steps = sorted({0, args.holders // 4, args.holders // 2, args.holders})
        for n in steps:
            if n > len(holders):
                say(f"starting holders up to {n}")
                holders += start_holders(exe, n - len(holders), args.mrs, args.size,
                                         args.device)
            scan.scan_processes()  # warm: imports, BTF layout, page cache
            scan_s, result = timed(scan.scan_processes, args.rounds)
            floor_s, _ = timed(status_floor, args.rounds)
            ladder.append({"holders": n, "pinners": len(result.processes),
                           "scanned": result.scanned, "scan_s": scan_s, "floor_s": floor_s})
            say(f"{n} holders: scan {scan_s:.3f} s, floor {floor_s:.3f} s")
        last = result
        say("zones scan, doctor scan, render")
        zones_s, _ = timed(lambda: scan.scan_zones(last.pinned_pfns()), 1)
        doctor_s, _ = timed(scan.scan_doctor, 1)
        view = families.View(top=args.top, processes=last)
        render_s, body = timed(lambda: families.render(view), args.rounds)
        runs = []
        for interval in (1.0, 15.0):
            say(f"exporter with a scan every {interval:g} s: {args.burst} scrapes, then "
                f"{args.window:g} s of 1 s scrapes")
            runs.append(exporter_run(interval, args.window, args.top, args.burst,
                                     args.scrape if interval == 1.0 else None))
    finally:
        stop_holders(holders)
        shutil.rmtree(work, ignore_errors=True)

    out = {"kernel": os.uname().release, "holders": args.holders, "mrs_per_holder": args.mrs,
           "mr_bytes": args.size, "ladder": ladder, "zones_scan_s": zones_s,
           "doctor_scan_s": doctor_s, "render_s": render_s, "exposition_bytes": len(body),
           "exporter": [{k: v for k, v in r.items() if k != "scrapes"} for r in runs]}
    if args.plot:
        plot(args.plot, ladder, runs)
        say(f"wrote {args.plot}")
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    print(f"kernel {out['kernel']}: {args.holders} holders x {args.mrs} MRs of "
          f"{args.size >> 10} KiB on {args.device}")
    print(f"{'HOLDERS':>8} {'PINNERS':>8} {'PIDS':>6} {'SCAN_S':>8} {'FLOOR_S':>8} {'X_FLOOR':>8}"
          f" {'MS/PINNER':>10}")
    base = ladder[0]["scan_s"]
    for r in ladder:
        per = 1e3 * (r["scan_s"] - base) / r["pinners"] if r["pinners"] else float("nan")
        print(f"{r['holders']:>8} {r['pinners']:>8} {r['scanned']:>6} {r['scan_s']:>8.3f} "
              f"{r['floor_s']:>8.3f} {r['scan_s'] / r['floor_s']:>8.1f} {per:>10.1f}")
    print(f"zones scan {zones_s:.2f} s, doctor {doctor_s:.2f} s, render {1e3 * render_s:.1f} ms "
          f"({len(body)} bytes, --top {args.top})")
    print(f"{'SCAN_EVERY':>10} {'SCRAPE_MS':>10} {'P95_MS':>8} {'PACED_MS':>9} {'BYTES':>7} "
          f"{'CPU_SHARE':>10} {'OF_1S':>6}")
    for r in out["exporter"]:
        print(f"{r['interval_s']:>9g}s {r['scrape_ms_median']:>10.1f} {r['scrape_ms_p95']:>8.1f} "
              f"{r['scrape_ms_paced_median']:>9.1f} {r['scrape_bytes']:>7} "
              f"{100 * r['cpu_share']:>9.1f}% {r['scrape_ms_median'] / 10:>5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
