"""The kernel's own counters, read as they are: /proc/vmstat, /proc/meminfo, /proc/PID/status.

Every number rdmapin prints about pins and migrations is checked against these. Mirrors
mm/vmstat.c (``vmstat_text``), fs/proc/meminfo.c and fs/proc/array.c (``task_mem`` prints
VmPin from ``mm->pinned_vm``). Checked on 6.1, 6.12 and 6.18.
"""

from __future__ import annotations

from pathlib import Path

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
    out: dict[str, int] = {}
    for line in (PROC / "vmstat").read_text().splitlines():
        name, _, value = line.partition(" ")
        out[name] = int(value)
    return out


def foll_pins() -> int:
    """Pages pinned system-wide with FOLL_PIN right now (acquired - released)."""
    v = vmstat()
    return v["nr_foll_pin_acquired"] - v["nr_foll_pin_released"]


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (MemAvailable, CmaTotal ...); HugePages_* stay page counts."""
    out: dict[str, int] = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        fields = value.split()  # "123 kB", or a bare count
        out[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def status(pid: int | str = "self") -> dict[str, int | str]:
    """/proc/PID/status; the ``kB`` fields become bytes (VmPin, VmLck, VmRSS ...)."""
    out: dict[str, int | str] = {}
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        name, _, value = line.partition(":")
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
    """/proc/PID/comm, or "?" once the process is gone."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"
