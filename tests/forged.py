"""Processes with forged names (issue 12), shared by the suites that check every output about
them: real processes holding a real long-term pin (an io_uring fixed buffer over a memfd:
tests/uring.py) that rename themselves and their memfd to names that break naive renderers
and parsers, and the checks their outputs must pass."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rdmapin.kernel import procfs
from rdmapin.kernel.printable import escape, unescape

TESTS = Path(__file__).resolve().parent

# Each at most 15 bytes (TASK_COMM_LEN - 1): written as they are to /proc/self/comm.
NAMES = {
    "prometheus": b'a"} 1\n#x',
    "stat": b"x) S 1 (y",
    "ansi": b"\x1b[2J",
    "bidi": "a\u202eb".encode(),
    "not-utf8": b"ab\xff",
    "backslash": rb"\x1b[2J",  # the text of an escape must not read as the escape
    # every line break str.splitlines knows but \n: a reader splitting there (status' Name:,
    # a path in smaps) failed on this process and `rdmapin inspect` left it out
    "linebreaks": "a\r\v\f\x1c\x1d\x1e\x85\u2028\u2029".encode(),
}
PLAIN = b"plain"  # the baseline: what a harmless name prints

# Started with `python -c CHILD TESTS NAME_HEX`: pins a memfd named NAME with an io_uring
# fixed buffer, names itself NAME, says "ready ADDR LENGTH"; on "compact" it compacts memory
# (so the trace sees events run by it) and says "done"; it unpins when stdin closes.
CHILD = r"""
import ctypes, mmap, os, sys
sys.path.insert(0, sys.argv[1])
from uring import FixedBuffer

name, length = bytes.fromhex(sys.argv[2]), 1 << 16
fd = os.memfd_create(name)
os.ftruncate(fd, length)
buf = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
buf.write(b"x" * length)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
try:
    pin = FixedBuffer(addr, length)
except OSError as e:
    print("error", e, flush=True)
    sys.exit(0)
with open("/proc/self/comm", "wb") as f:
    f.write(name)
print("ready", addr, length, flush=True)
for line in sys.stdin:
    if line.strip() == "compact":
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1")
        print("done", flush=True)
pin.close()
"""

@dataclass
class Child:
    raw: bytes  # the name as written
    proc: subprocess.Popen
    addr: int
    length: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        """The name as rdmapin's readers decode it."""
        return self.raw.decode("utf-8", "surrogateescape")

    @property
    def path(self) -> bytes:
        """Its memfd's path in /proc/PID/maps (show_map_vma escapes a newline as \\012)."""
        return b"/memfd:" + self.raw.replace(b"\n", b"\\012") + b" (deleted)"

    def compact(self) -> None:
        self.proc.stdin.write(b"compact\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == b"done\n"


@contextlib.contextmanager
def children(names: dict[str, bytes] | None = None) -> Iterator[dict[str, Child]]:
    """One pinning child per name (and "plain"), each renamed; closed (unpinned) after."""
    if os.geteuid() != 0:
        pytest.skip("another process's pages and PFNs need root")
    kids: dict[str, Child] = {}
    try:
        for key, raw in {"plain": PLAIN, **(NAMES if names is None else names)}.items():
            proc = subprocess.Popen([sys.executable, "-c", CHILD, str(TESTS), raw.hex()],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            word, *rest = proc.stdout.readline().decode().split()
            if word != "ready":
                proc.kill()
                pytest.skip(f"io_uring unavailable here: {' '.join(rest)}")
            kids[key] = Child(raw, proc, int(rest[0]), int(rest[1]))
            assert procfs.comm(proc.pid) == kids[key].name  # the kernel kept every byte
        yield kids
    finally:
        for kid in kids.values():
            kid.proc.stdin.close()
            kid.proc.wait(timeout=30)


def check_text(out: str) -> list[str]:
    """``out``'s lines, after checking it holds nothing a terminal would act on: no control
    character but the newline ending each line, no bidi or other format character, no line
    separator a reader might split at."""
    bad = sorted({c for c in out if c != "\n" and not c.isprintable()})
    assert not bad, f"raw characters in the output: {bad!r}"
    assert out.endswith("\n") and len(out.splitlines()) == out.count("\n")
    return out.splitlines()


def check_json(line: str) -> dict:
    """One JSON line: ASCII (so no lone surrogate), parses, and prints back the same."""
    assert line.isascii(), line
    obj = json.loads(line)
    assert json.loads(json.dumps(obj, sort_keys=True)) == obj
    return obj


def check_name(shown: str, child: Child) -> None:
    """``shown`` is ``child``'s comm as every output carries it, and gives back its bytes."""
    assert shown == escape(child.name)
    assert unescape(shown) == child.raw
