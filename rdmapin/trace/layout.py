"""The tracer's event layout, read from bpf/rdmapin_events.h: the one place it is written.

The header declares ``enum rp_kind`` (what happened), ``enum rp_folio_stage``, ``enum
rp_counter`` (the per-CPU totals; a ``[vmstat]`` comment marks those that equal
/proc/vmstat's counter of the same name), one struct of named fields per kind and
``struct rp_event``: the generic fields every event has, then a union whose members'
comments name the kinds they serve. This module reads those declarations (one per line, as
the header writes them; nothing else of C), checks them against each other, and builds the
ctypes record the user side decodes events from.

bcc cannot give that record: its struct-from-C reading (``table.event()``) maps each field
of the submitted struct to a ctypes type by name, and bcc 0.26 exits the process on the
union (``Type: 'union rp_event::(anonymous ...)' not recognized``). The record is built here
instead; the compiler checks ``sizeof(struct rp_event) == RP_EVENT_SIZE`` (a
``_Static_assert`` in the header), ``parse`` checks the ctypes record against the same
number, and ``check_compiled`` compares the generic fields bcc saw in the compiled program.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass

from rdmapin import sources
from rdmapin.errors import RdmapinError

HEADER = "rdmapin_events.h"

CTYPES: dict[str, type] = {
    "u8": ctypes.c_uint8, "s8": ctypes.c_int8, "u16": ctypes.c_uint16, "s16": ctypes.c_int16,
    "u32": ctypes.c_uint32, "s32": ctypes.c_int32, "u64": ctypes.c_uint64,
    "s64": ctypes.c_int64, "char": ctypes.c_char,
}

_DEFINE = re.compile(r"^#define\s+(\w+)\s+(\d+)\b", re.M)
_BLOCK = re.compile(r"^(enum|struct)\s+(\w+)\s*\{[^\n]*\n(.*?)^\};", re.M | re.S)
_ENUMERATOR = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*(?:=\s*(\w+))?\s*,?\s*(?:/\*(.*?)(?:\*/)?)?$")
_FIELD = re.compile(r"^\s*(\w+)\s+(\w+)(?:\[(\w+)\])?;")
_MEMBER = re.compile(r"^\s*struct\s+(\w+)\s+(\w+);\s*/\*(.*?)\*/")


class LayoutError(RdmapinError):
    """bpf/rdmapin_events.h does not say what the tracer needs (a mistake in the header)."""


@dataclass(frozen=True)
class Counter:
    name: str      # enum rp_counter's name without RPC_, lower case: the key in totals()
    slot: int
    vmstat: bool   # equals /proc/vmstat's counter of the same name


@dataclass(frozen=True)
class Member:
    """One member of struct rp_event's union: the named fields of the kinds it serves."""

    name: str                          # ev.<name>.<field> in C, rec.<name>.<field> here
    struct: str                        # struct rp_<...>
    fields: tuple[tuple[str, str], ...]  # (name, C type)
    kinds: tuple[str, ...]             # enum rp_kind names without RP_

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.fields)


@dataclass(frozen=True)
class Layout:
    kinds: dict[str, int]               # enum rp_kind without RP_: "FOLIO_FAIL" -> 2
    counters: tuple[Counter, ...]       # enum rp_counter in slot order, without RPC_NR
    stages: dict[int, str]              # enum rp_folio_stage: 1 -> "unmap"
    generic: tuple[tuple[str, str], ...]  # struct rp_event's fields before the union
    members: tuple[Member, ...]         # the union's, in declaration order
    size: int                           # RP_EVENT_SIZE

    def member_of(self, kind: str) -> Member:
        for m in self.members:
            if kind in m.kinds:
                return m
        raise LayoutError(f"no member of struct rp_event's union names RP_{kind}")

    @functools.cached_property
    def record(self) -> type[ctypes.Structure]:
        """struct rp_event as ctypes: ``rec.kind``, ``rec.folio.pfn``, ``rec.migrate.failed``."""
        union = type("rp_event_union", (ctypes.Union,), {"_fields_": [
            (m.name, _struct(m.struct, m.fields)) for m in self.members]})
        fields = [(n, _ctype(t)) for n, t in self.generic]
        return type("rp_event", (ctypes.Structure,),
                    {"_fields_": [*fields, ("kind_fields", union)],
                     "_anonymous_": ("kind_fields",)})

    def check_compiled(self, fields: list[str]) -> None:
        """Compare struct rp_event as bcc compiled it (its ``name#type`` list of the submitted
        struct, libbcc's bpf_perf_event_field) with this layout's generic fields and union."""
        want = [f"{n}#{t}" for n, t in self.generic]
        got = [re.sub(r"\s+\[", "[", f) for f in fields]
        if got[:len(want)] != want or len(got) != len(want) + 1 or not (
                got[-1].startswith("#union")):
            raise LayoutError(f"the compiled struct rp_event ({', '.join(fields)}) is not "
                              f"the header's ({', '.join(want)}, union)",
                              hint="the program was built from another rdmapin_events.h")


def _ctype(ctype: str) -> type:
    name, _, count = ctype.partition("[")
    try:
        base = CTYPES[name]
    except KeyError:
        raise LayoutError(f"rdmapin_events.h: type {name} is not one the tracer decodes "
                          f"({', '.join(CTYPES)})") from None
    return base * int(count.rstrip("]")) if count else base


def _struct(name: str, fields: tuple[tuple[str, str], ...]) -> type[ctypes.Structure]:
    return type(name, (ctypes.Structure,), {"_fields_": [(n, _ctype(t)) for n, t in fields]})


def _enum(body: str) -> list[tuple[str, int, str]]:
    """(name, value, comment) of each enumerator, C's implicit values filled in."""
    out = []
    value = -1
    for line in body.splitlines():
        m = _ENUMERATOR.match(line)
        if m is None or line.lstrip().startswith("*"):
            continue  # a comment's continuation line
        value = int(m.group(2), 0) if m.group(2) else value + 1
        out.append((m.group(1), value, (m.group(3) or "").strip()))
    return out


def _fields(body: str, defines: dict[str, int]) -> tuple[tuple[str, str], ...]:
    """(name, C type) of each field line; an array's length a number ("char[16]")."""
    out = []
    for line in body.splitlines():
        m = _FIELD.match(line)
        if m:
            count = m.group(3)
            if count:
                count = str(defines[count]) if count in defines else count
            out.append((m.group(2), m.group(1) + (f"[{count}]" if count else "")))
    return tuple(out)


def _strip(prefix: str, name: str) -> str:
    if not name.startswith(prefix):
        raise LayoutError(f"rdmapin_events.h: {name} lacks the prefix {prefix}")
    return name[len(prefix):]


def parse(text: str) -> Layout:
    """The layout the header ``text`` declares, checked for consistency."""
    defines = {m.group(1): int(m.group(2)) for m in _DEFINE.finditer(text)}
    blocks = {(m.group(1), m.group(2)): m.group(3) for m in _BLOCK.finditer(text)}

    def block(kind: str, name: str) -> str:
        try:
            return blocks[(kind, name)]
        except KeyError:
            raise LayoutError(f"rdmapin_events.h declares no {kind} {name}") from None

    kinds = {_strip("RP_", n): v for n, v, _ in _enum(block("enum", "rp_kind"))}
    stages = {v: _strip("RP_STAGE_", n).lower()
              for n, v, _ in _enum(block("enum", "rp_folio_stage"))}
    counters = tuple(Counter(_strip("RPC_", n).lower(), v, "[vmstat]" in c)
                     for n, v, c in _enum(block("enum", "rp_counter")) if n != "RPC_NR")
    if [c.slot for c in counters] != list(range(len(counters))):
        raise LayoutError("rdmapin_events.h: enum rp_counter must number its slots 0, 1, ...")

    event = block("struct", "rp_event")
    generic_text, union_sep, union_text = event.partition("union {")
    if not union_sep:
        raise LayoutError("rdmapin_events.h: struct rp_event has no union of per-kind fields")
    members = []
    for line in union_text.splitlines():
        m = _MEMBER.match(line)
        if m:
            names = tuple(_strip("RP_", k) for k in re.findall(r"\bRP_\w+", m.group(3)))
            members.append(Member(m.group(2), m.group(1),
                                  _fields(block("struct", m.group(1)), defines), names))
    if "RP_EVENT_SIZE" not in defines:
        raise LayoutError("rdmapin_events.h: no #define RP_EVENT_SIZE")
    layout = Layout(kinds=kinds, counters=counters, stages=stages,
                    generic=_fields(generic_text, defines), members=tuple(members),
                    size=defines["RP_EVENT_SIZE"])

    served = [k for m in members for k in m.kinds]
    if sorted(served) != sorted(kinds):
        unserved = sorted(set(kinds) - set(served))
        twice = sorted({k for k in served if served.count(k) > 1})
        unknown = sorted(set(served) - set(kinds))
        raise LayoutError("rdmapin_events.h: every kind needs exactly one union member "
                          f"(none: {unserved}, more than one: {twice}, unknown: {unknown})")
    for m in members:
        if not m.fields:
            raise LayoutError(f"rdmapin_events.h: struct {m.struct} has no fields")
    if ctypes.sizeof(layout.record) != layout.size:
        raise LayoutError(f"rdmapin_events.h: struct rp_event is {ctypes.sizeof(layout.record)}"
                          f" bytes as read, RP_EVENT_SIZE says {layout.size}")
    return layout


@functools.cache
def load() -> Layout:
    """The layout of the header the tracer compiles (found like the BPF sources)."""
    return parse((sources.bpf_dir() / HEADER).read_text())
