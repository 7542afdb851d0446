"""tracefs: where it is mounted, and what its files say about a tracepoint.

Mirrors the kernel's trace event output (kernel/trace/trace_events.c: ``format`` files with
``field:TYPE NAME; offset:...`` lines and the ``print fmt`` whose ``__print_symbolic`` tables
name enum values) and ``available_filter_functions`` (kernel/trace/ftrace.c). Checked on 6.1
and 6.12 in the guest and on 6.18 on the host. rdmapin never mounts tracefs itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
MOUNT_TRACEFS = "mount -t tracefs tracefs /sys/kernel/tracing"


def tracefs() -> Path | None:
    """The mounted tracefs this user can read, or None (not mounted, or not root)."""
    for p in TRACEFS_CANDIDATES:
        try:
            if (p / "events").is_dir():
                return p
        except PermissionError:  # not root: the caller says so
            return None
    return None


@dataclass(frozen=True)
class TracepointFormat:
    """One tracepoint's fields and the names its print fmt gives to each field's values."""

    fields: dict[str, str]
    symbols: dict[str, dict[int, str]]


_FIELD = re.compile(r"field:(?P<type>[^;]*?)\s*(?P<name>\w+)(?:\[\w*\])?;\s*offset:")
_SYMBOLIC = re.compile(r"__print_symbolic\(REC->(?P<field>\w+),\s*(?P<body>(?:\{[^}]*\},?\s*)+)\)")
_PAIR = re.compile(r"\{\s*(-?\w+)\s*,\s*\"([^\"]*)\"\s*\}")


def parse_format(text: str) -> TracepointFormat:
    """Fields and ``__print_symbolic`` tables of a tracefs ``format`` file."""
    fields = {m["name"]: m["type"].strip() for m in _FIELD.finditer(text)}
    symbols: dict[str, dict[int, str]] = {}
    fmt = text.partition("print fmt:")[2]
    for m in _SYMBOLIC.finditer(fmt):
        table = {}
        for num, name in _PAIR.findall(m["body"]):
            try:
                table[int(num, 0)] = name
            except ValueError:
                continue
        symbols.setdefault(m["field"], table)
    return TracepointFormat(fields, symbols)


def read_format(root: Path, tp: str) -> TracepointFormat | None:
    """``category:event``'s format file parsed, or None where the kernel has no such event."""
    cat, _, name = tp.partition(":")
    try:
        return parse_format((root / "events" / cat / name / "format").read_text())
    except OSError:
        return None


def available_functions(root: Path, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` are in available_filter_functions (kprobe-able, not inlined)."""
    want = {w.encode() for w in wanted}
    found: set[str] = set()
    try:
        with open(root / "available_filter_functions", "rb") as f:
            for line in f:
                name = line.split(None, 1)[0] if line.strip() else b""
                if name in want:
                    found.add(name.decode())
    except OSError:
        pass
    return found
