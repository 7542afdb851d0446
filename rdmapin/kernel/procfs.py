"""The kernel's own counters, read as they are: /proc/vmstat, /proc/meminfo, /proc/PID/status,
/proc/PID/stat and /proc/PID/limits, and the pids in /proc.

Every number rdmapin prints about pins and migrations is checked against these. Mirrors
mm/vmstat.c (``vmstat_text``), fs/proc/meminfo.c and fs/proc/array.c (``task_mem`` prints
VmPin from ``mm->pinned_vm``; ``do_task_stat`` for stat) and fs/proc/base.c
(``proc_pid_limits``). Checked on 6.1, 6.12 and 6.18.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rdmapin.errors import KernelFormatError
from rdmapin.kernel.textfile import lines

PROC = Path("/proc")


def sysctl(name: str) -> str:
    """/proc/sys/NAME (``vm/max_map_count``) as text, stripped."""
    return (PROC / "sys" / name).read_text().strip()


def refresh() -> bool:
    """Fold every CPU's pending counter deltas into the global vmstat counters.

    Node and zone counters (nr_foll_pin_acquired among them) are kept per CPU and folded only
    past a threshold, so /proc/vmstat can lag by tens of pages per CPU; writing
    /proc/sys/vm/stat_refresh (root) folds them now. Event counters (pgmigrate_*) are exact
    without it. Returns False when not permitted.
    """
    try:
        (PROC / "sys" / "vm" / "stat_refresh").write_text("1")
    except OSError:
        return False
    return True


def vmstat(*, exact: bool = True) -> dict[str, int]:
    """/proc/vmstat as a dict (pgmigrate_fail, nr_foll_pin_acquired, compact_* ...).

    ``exact`` folds per-CPU deltas first (see refresh) where permitted.
    """
    if exact:
        refresh()
    return parse_vmstat((PROC / "vmstat").read_text())


def parse_vmstat(text: str, path: str = "/proc/vmstat") -> dict[str, int]:
    """``name value`` per line."""
    out: dict[str, int] = {}
    with lines(text, path) as src:
        for line in src:
            name, value = line.split()
            out[name] = int(value)
    return out


def foll_pins() -> int:
    """Pages pinned system-wide with FOLL_PIN right now (acquired - released)."""
    v = vmstat()
    return v["nr_foll_pin_acquired"] - v["nr_foll_pin_released"]


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (MemAvailable, CmaTotal ...); HugePages_* stay page counts."""
    return parse_meminfo((PROC / "meminfo").read_text())


def parse_meminfo(text: str, path: str = "/proc/meminfo") -> dict[str, int]:
    """``Name:  123 kB`` (bytes) or ``Name:  123`` (a count) per line."""
    out: dict[str, int] = {}
    with lines(text, path) as src:
        for line in src:
            name, sep, value = line.partition(":")
            fields = value.split()  # "123 kB", or a bare count
            if not sep or fields[1:] not in ([], ["kB"]):
                raise src.fail("expected 'Name: N' or 'Name: N kB'")
            out[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def status(pid: int | str = "self") -> dict[str, int | str]:
    """/proc/PID/status; the ``kB`` fields become bytes (VmPin, VmLck, VmRSS ...)."""
    # Name: is the comm, any byte but NUL (fs/proc/array.c escapes only \n and \\ in it):
    # bytes decoded as they are, no newline translation (a \r in it is not a line end)
    text = (PROC / str(pid) / "status").read_bytes().decode("utf-8", "surrogateescape")
    return parse_status(text, f"/proc/{pid}/status")


def parse_status(text: str, path: str = "/proc/PID/status") -> dict[str, int | str]:
    """``Name:\tvalue`` per line; ``N kB`` values become bytes, the rest stay text. Name: is
    the first field and may hold anything (a forged comm), so each line splits at its first
    colon and only the known layout is trusted."""
    out: dict[str, int | str] = {}
    with lines(text, path) as src:
        for line in src:
            name, sep, value = line.partition(":")
            if not sep:
                raise src.fail("expected 'Name: value'")
            value = value.strip()
            if value.endswith(" kB"):
                out[name] = int(value[:-3]) * 1024
            else:
                out[name] = value
    return out


def vm_pin(pid: int | str = "self") -> int:
    """Bytes this process has pinned long-term and charged to RLIMIT_MEMLOCK (VmPin)."""
    return int(status(pid)["VmPin"])


def comm(pid: int | str = "self") -> str:
    """/proc/PID/comm as the process set it (any bytes but NUL, up to 15; fs/proc/base.c
    ``comm_show`` adds only the newline), bytes that are not UTF-8 kept by surrogateescape:
    print it through rdmapin.kernel.printable.escape. "?" once the process is gone."""
    try:
        raw = (PROC / str(pid) / "comm").read_bytes()
    except OSError:
        return "?"
    return raw.decode("utf-8", "surrogateescape").removesuffix("\n")


def pids() -> list[int]:
    """Every process id in /proc now (it changes while you look: each read may find it gone)."""
    return sorted(int(name) for name in os.listdir(PROC) if name.isdigit())


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat rdmapin uses. ``start_ticks`` (field 22) tells a pid
    reused by a new process from the one seen before; CPU times are in seconds."""

    start_ticks: int
    utime: float
    stime: float


def stat(pid: int | str = "self") -> Stat:
    """/proc/PID/stat, read as bytes like status (the comm in it may hold anything)."""
    text = (PROC / str(pid) / "stat").read_bytes().decode("utf-8", "surrogateescape")
    return parse_stat(text, f"/proc/{pid}/stat")


def parse_stat(text: str, path: str = "/proc/PID/stat") -> Stat:
    """One record. The comm (field 2) is printed raw in parentheses (do_task_stat: no
    escaping) and may hold ") ", digits and even newlines, so the record is not split into
    lines and its fields are counted from the last ')'."""
    _, paren, tail = text.rpartition(")")
    fields = tail.split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22
    try:
        if not paren or len(fields) < 20:
            raise ValueError("expected 'PID (COMM) STATE ...' with 22 fields or more")
        tick = os.sysconf("SC_CLK_TCK")
        return Stat(start_ticks=int(fields[19]), utime=int(fields[11]) / tick,
                    stime=int(fields[12]) / tick)
    except ValueError as e:
        raise KernelFormatError(path, 1, text.rstrip("\n"), str(e)) from None


def memlock_limit(pid: int | str = "self") -> int | None:
    """The soft RLIMIT_MEMLOCK of ``pid`` in bytes (what ib_umem_get checks VmPin against),
    None when unlimited. From /proc/PID/limits, which anyone may read."""
    text = (PROC / str(pid) / "limits").read_text()
    return parse_limits(text, f"/proc/{pid}/limits")["Max locked memory"][0]


def parse_limits(text: str, path: str = "/proc/PID/limits"
                 ) -> dict[str, tuple[int | None, int | None]]:
    """``Name  soft  hard  [units]`` per line after the header; the name is the first 25
    columns (``%-25s``), "unlimited" is None."""
    out: dict[str, tuple[int | None, int | None]] = {}
    with lines(text, path) as src:
        for line in src:
            if src.lineno == 1:
                if not line.startswith("Limit "):
                    raise src.fail("expected the 'Limit  Soft Limit  Hard Limit  Units' header")
                continue
            name, values = line[:25].strip(), line[25:].split()
            if not name or len(values) < 2:
                raise src.fail("expected 'Name  soft  hard  [units]'")
            soft, hard = (None if v == "unlimited" else int(v) for v in values[:2])
            out[name] = (soft, hard)
    return out
