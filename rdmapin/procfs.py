"""The kernel's own counters, read as they are: /proc/vmstat and /proc/PID/status.

Every number rdmapin prints about pins and migrations is checked against these.
"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def vmstat() -> dict[str, int]:
    """/proc/vmstat as a dict (pgmigrate_fail, nr_foll_pin_acquired, compact_* ...)."""
    out: dict[str, int] = {}
    for line in (PROC / "vmstat").read_text().splitlines():
        name, _, value = line.partition(" ")
        out[name] = int(value)
    return out


def foll_pins() -> int:
    """Pages pinned system-wide with FOLL_PIN right now (acquired - released)."""
    v = vmstat()
    return v["nr_foll_pin_acquired"] - v["nr_foll_pin_released"]


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
