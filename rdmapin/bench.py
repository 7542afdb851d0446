"""Registration cost, measured in one run: the C floor, rdmapin and pyverbs side by side.

Per-op: 4 KiB ibv_reg_mr + ibv_dereg_mr in a loop. "C floor" is csrc/reg_floor.c's loop
(compiled at run time with the system cc) called in this process on the PD and buffer rdmapin
registers, so the kernel and provider state is the same and what is left is the Python side;
"C, own process" is the same loop as a program of its own (its own context and PD). Then
the bare cffi call loop ("shim via cffi": the interpreter's share, no API around it),
rdmapin's register/close on three buffer kinds, and pyverbs' MR/close. Each round runs every
contender once in a rotated order, so a noisy neighbour hits all alike; reported per row: the
median round, the best round, and the median of per-round ratios to the same round's C floor
(the figure the slow phases of a shared TCG host disturb least).
Bulk: registration cost in us/MiB for sizes x backings (4K, THP, 2M hugetlb), skipping what
does not fit in free memory or free hugepages (and saying so).
Progress goes to stderr; the tables are returned as text (``render``) and rows (``run``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rdmapin import _lib, explain, memory, sources
from rdmapin.access import Access
from rdmapin.device import open_device
from rdmapin.errors import UnsupportedError
from rdmapin.kernel import procfs

ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
MIB = 1 << 20


def progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class PerOp:
    name: str
    rounds: list[float] = field(default_factory=list)  # us/op per round
    paired: list[float] = field(default_factory=list)  # round / the C floor's same round

    @property
    def paired_ratio(self) -> float:
        return statistics.median(self.paired) if self.paired else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.rounds) if self.rounds else float("nan")

    @property
    def best(self) -> float:
        """The least-disturbed round: on a shared 2-core host under TCG, other guests only
        ever add time, so the minimum is the closest to the intrinsic cost."""
        return min(self.rounds) if self.rounds else float("nan")


@dataclass
class Bulk:
    size: int
    pages: str
    backing: str | None = None  # what the kernel actually gave
    reg_us: float | None = None
    dereg_us: float | None = None
    skipped: str | None = None

    @property
    def us_per_mib(self) -> float | None:
        return None if self.reg_us is None else self.reg_us / (self.size / MIB)


def build_floor(outdir: Path) -> tuple[Path, Path]:
    """Compile csrc/reg_floor.c with the system compiler into ``outdir``: the program (its
    own process) and the library whose loop runs in this one."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise UnsupportedError("no C compiler (cc) to build the C floor csrc/reg_floor.c",
                               hint="apt-get install gcc libibverbs-dev")
    src = sources.floor_source()
    if not src.is_file():
        raise UnsupportedError(f"the C floor's source {src} is missing",
                               hint="reinstall rdmapin from its wheel or sdist, or run "
                                    "from the source tree")
    exe, so = outdir / "reg_floor", outdir / "libreg_floor.so"
    for argv in ([cc, "-O2", "-o", str(exe), str(src), "-libverbs"],
                 [cc, "-O2", "-shared", "-fPIC", "-DREG_FLOOR_LIB", "-o", str(so), str(src),
                  "-libverbs"]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise UnsupportedError(f"compiling the C floor {src} failed: {last}",
                                   hint="apt-get install gcc libibverbs-dev")
    return exe, so


def floor_round(exe: Path, device: str, iters: int) -> float:
    out = subprocess.run([str(exe), device, str(iters), "4096"], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[0])


def floor_loop(so: Path) -> Callable[[Any, int, int], float]:
    """csrc/reg_floor.c's loop, in this process: (pd, addr, iters) -> us per op."""
    lib = ctypes.CDLL(str(so))
    fn = lib.rdmapin_floor_loop
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                   ctypes.c_long, ctypes.c_long]

    def run(pd: Any, addr: int, iters: int) -> float:
        us = fn(_lib.address_of(pd._handle().pd), addr, 4096, int(ACCESS), iters, 0)
        if us < 0:
            raise OSError(int(-us), f"ibv_reg_mr in the C floor: {os.strerror(int(-us))}")
        return us
    return run


def rdmapin_round(pd: Any, obj: Any, iters: int) -> float:
    register = pd.register
    access = ACCESS
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        register(obj, access).close()
    return (time.perf_counter_ns() - t0) / iters / 1e3


def cffi_round(pd: Any, addr: int, iters: int) -> float:
    """The shim's reg/dereg called straight from a Python loop: no MR object, no checks."""
    p, reg, dereg, access = pd._handle(), _lib.reg_mr_at, _lib.dereg_mr, int(ACCESS)
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        dereg(_lib.gc(reg(p, addr, 4096, access), _lib.mr_free))
    return (time.perf_counter_ns() - t0) / iters / 1e3


def pyverbs_round(pd: Any, addr: int, iters: int) -> float:
    from pyverbs.mr import MR

    access = int(ACCESS)
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        MR(pd, 4096, access, address=addr).close()
    return (time.perf_counter_ns() - t0) / iters / 1e3


def per_op(device: str, iters: int, rounds: int, workdir: Path) -> list[PerOp]:
    """Each round runs every contender once, in an order rotated round by round (so none
    always follows the C program's process start and exit)."""
    exe, so = build_floor(workdir)
    c_loop = floor_loop(so)
    ba = bytearray(4096)
    buf = memory.alloc(4096)
    try:
        from pyverbs.device import Context
        from pyverbs.pd import PD
    except ImportError:
        Context = None  # pyverbs missing: its row stays out
    with open_device(device) as dev, dev.alloc_pd() as pd:
        ctx = Context(name=device) if Context else None
        vpd = PD(ctx) if ctx else None
        contenders: dict[str, Callable[[int], float]] = {
            "C floor": lambda n: c_loop(pd, buf.addr, n),
            "C, own process": lambda n: floor_round(exe, device, n),
            "shim via cffi": lambda n: cffi_round(pd, buf.addr, n),
            "rdmapin numpy": lambda n: rdmapin_round(pd, buf, n),
            "rdmapin bytearray": lambda n: rdmapin_round(pd, ba, n),
            "rdmapin (addr,len)": lambda n: rdmapin_round(pd, (buf.addr, 4096), n),
        }
        if vpd is not None:
            contenders["pyverbs"] = lambda n: pyverbs_round(vpd, buf.addr, n)
        rows = {k: PerOp(k) for k in contenders}
        names = list(contenders)
        try:
            for name in names:  # warm-up: imports, caches, first faults
                if name != "C, own process":
                    contenders[name](iters // 10 + 1)
            for r in range(rounds):
                progress(f"per-op round {r + 1}/{rounds} ({iters} x 4 KiB reg+dereg each)")
                k = r % len(names)
                for name in names[k:] + names[:k]:
                    rows[name].rounds.append(contenders[name](iters))
        finally:
            if vpd is not None:
                vpd.close()
                ctx.close()
    floor = rows["C floor"].rounds
    for row in rows.values():
        row.paired = [r / c for r, c in zip(row.rounds, floor, strict=True)]
    return list(rows.values())


def _fits(size: int, pages: str) -> str | None:
    """None when ``size`` of ``pages`` can be allocated now, else why not."""
    if pages in ("2m", "1g"):
        hp = memory.KINDS[pages][0]
        free = explain.hugepages_free(hp).get(-1, 0)
        if free * hp < size:
            return f"needs {size // hp} free {pages} hugepages, {free} free"
        return None
    avail = procfs.meminfo()["MemAvailable"]
    if avail < size + 128 * MIB:
        return f"needs {size >> 20} MiB + 128 MiB headroom, MemAvailable {avail >> 20} MiB"
    return None


def bulk(device: str, sizes: list[int], kinds: list[str]) -> list[Bulk]:
    out = []
    with open_device(device) as dev, dev.alloc_pd() as pd:
        for size in sizes:
            for pages in kinds:
                row = Bulk(size, pages)
                out.append(row)
                row.skipped = _fits(size, pages)
                if row.skipped:
                    progress(f"{size >> 20} MiB {pages}: skipped ({row.skipped})")
                    continue
                progress(f"{size >> 20} MiB {pages}: allocating and populating")
                buf = memory.alloc(size, pages)
                row.backing = buf.backing
                progress(f"{size >> 20} MiB {pages} (got {row.backing}): registering")
                t0 = time.perf_counter_ns()
                mr = pd.register(buf, ACCESS)
                t1 = time.perf_counter_ns()
                mr.close()
                t2 = time.perf_counter_ns()
                row.reg_us, row.dereg_us = (t1 - t0) / 1e3, (t2 - t1) / 1e3
                del buf, mr
    return out


def render(ops: list[PerOp], rows: list[Bulk]) -> str:
    lines = []
    floor = next((o for o in ops if o.name == "C floor"), None)
    if ops and floor:
        lines.append(f"{'4 KiB REG+DEREG':<19} {'MEDIAN_US':>9} {'X_C':>5} {'BEST_US':>8} "
                     f"{'X_C':>5} {'PAIRED_X_C':>10}  ROUNDS")
        for o in ops:
            lines.append(f"{o.name:<19} {o.median:>9.1f} {o.median / floor.median:>5.2f} "
                         f"{o.best:>8.1f} {o.best / floor.best:>5.2f} {o.paired_ratio:>10.2f}"
                         f"  {len(o.rounds)}")
    if rows:
        if lines:
            lines.append("")
        lines.append(f"{'SIZE':>8} {'PAGES':<5} {'GOT':<11} {'REG_MS':>9} {'US/MIB':>8} "
                     f"{'DEREG_MS':>9}")
        for r in rows:
            head = f"{r.size >> 20:>5}MiB {r.pages:<5} "
            if r.skipped:
                lines.append(f"{head}skipped: {r.skipped}")
            else:
                lines.append(f"{head}{r.backing or '-':<11} {r.reg_us / 1e3:>9.1f} "
                             f"{r.us_per_mib:>8.1f} {r.dereg_us / 1e3:>9.1f}")
    return "\n".join(lines)


def run(device: str = "rxe0", *, iters: int = 500, rounds: int = 9,
        sizes: list[int] | None = None, kinds: list[str] | None = None,
        workdir: Path | None = None) -> tuple[list[PerOp], list[Bulk]]:
    """Both benchmarks; ``workdir`` holds the compiled floor (RDMAPIN_RESULTS or a temp)."""
    sizes = [64 * MIB, 256 * MIB, 1024 * MIB] if sizes is None else sizes
    kinds = ["4k", "thp", "2m"] if kinds is None else kinds
    base = workdir or Path(os.environ.get("RDMAPIN_RESULTS") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix="reg_floor.") as tmp:
        ops = per_op(device, iters, rounds, Path(tmp)) if iters else []
    rows = bulk(device, sizes, kinds) if sizes else []
    return ops, rows
