"""/proc/PID/smaps for the VMAs that cover an address range: the kernel's own per-mapping
counts (Rss, AnonHugePages, Locked, KernelPageSize ...) that every report is checked against.

Mirrors fs/proc/task_mmu.c (``show_map_vma`` for the header line, ``show_smap`` and
``__show_smap`` for the ``Name:  N kB`` fields, ``show_smap_vma_flags`` for VmFlags); maps is
the same header without the fields. Checked on 6.1, 6.12 and 6.18."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.kernel.textfile import lines, read_proc

_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")


@dataclass
class Vma:
    """One mapping: its range, permissions, backing path and smaps fields in bytes."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    fields: dict[str, int] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    @property
    def kernel_page_size(self) -> int:
        return self.fields.get("KernelPageSize", PAGE_SIZE)

    @property
    def hugetlb(self) -> bool:
        return "ht" in self.flags

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def locked(self) -> bool:
        return "lo" in self.flags

    def overlaps(self, addr: int, length: int) -> bool:
        return self.start < addr + length and addr < self.end


def parse(text: str, path: str = "/proc/PID/smaps") -> list[Vma]:
    """All VMAs in maps or smaps text, in address order; a line that is neither a mapping
    nor a ``Name: value`` field is a KernelFormatError naming it."""
    out: list[Vma] = []
    cur: Vma | None = None
    with lines(text, path) as src:
        for line in src:
            m = _HEADER.match(line)
            if m:
                cur = Vma(int(m.group(1), 16), int(m.group(2), 16), m.group(3),
                          int(m.group(4), 16), int(m.group(6)), m.group(7).strip())
                out.append(cur)
                continue
            name, sep, value = line.partition(":")
            if cur is None or not sep:
                raise src.fail("expected a mapping line (START-END PERMS OFFSET DEV INODE)"
                               if cur is None else "expected 'Name: value'")
            value = value.strip()
            if name == "VmFlags":
                cur.flags = tuple(value.split())
            elif value.endswith(" kB"):
                cur.fields[name] = int(value[:-3]) * 1024
            elif value.isascii() and value.isdigit():
                cur.fields[name] = int(value)
    return out


def read(pid: int | str = "self", detail: bool = True) -> list[Vma]:
    """VMAs of ``pid``: from smaps (``detail``) or from maps, which skips smaps' walk of
    every page table and so costs nothing per page."""
    path = f"/proc/{pid}/{'smaps' if detail else 'maps'}"
    # A path is the file's name, any bytes (show_map_vma escapes only a newline, as \012).
    return parse(read_proc(path), path)


def count(pid: int | str = "self") -> int:
    """How many VMAs ``pid`` has (one line of /proc/PID/maps each), against vm.max_map_count."""
    return read_proc(f"/proc/{pid}/maps").count("\n")


def covering(pid: int | str, addr: int, length: int, detail: bool = True) -> list[Vma]:
    """The VMAs overlapping [addr, addr + length), in address order."""
    return [v for v in read(pid, detail) if v.overlaps(addr, length)]


def total(vmas: list[Vma], name: str) -> int:
    """Sum of one smaps field (bytes) over ``vmas``."""
    return sum(v.fields.get(name, 0) for v in vmas)
