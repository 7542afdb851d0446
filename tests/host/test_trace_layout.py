"""The event layout as read from bpf/rdmapin_events.h (rdmapin.trace.layout): kinds,
counters and per-kind fields, checked against what the BPF files write and against this
machine's /proc/vmstat; the parser's refusals on headers that break its rules."""

from __future__ import annotations

import ctypes
import re

import pytest

from rdmapin import sources
from rdmapin.kernel import procfs
from rdmapin.trace import Kind
from rdmapin.trace import layout as L
from rdmapin.trace.events import COUNTERS, EVENT_NAMES, LAYOUT, VMSTAT_KEYS

HEADER_TEXT = (sources.bpf_dir() / L.HEADER).read_text()


def _bpf_functions() -> list[tuple[str, str]]:
    """(file, body) of every function in bpf/*.c (kernel style: braces at column 0)."""
    out = []
    for path in sorted(sources.bpf_dir().glob("*.c")):
        out += [(path.name, m.group(1))
                for m in re.finditer(r"^\{\n(.*?)^\}", path.read_text(), re.M | re.S)]
    return out


@pytest.mark.pure
def test_kinds_are_the_headers_enum_in_order():
    assert [k.name for k in Kind] == [
        "MIGRATE", "FOLIO_FAIL", "COMPACT_BEGIN", "COMPACT_END", "ISOLATE_MIGRATE",
        "ISOLATE_FREE", "COMPACT_MIGRATE", "COMPACT_FINISHED", "COMPACT_DEFERRED",
        "ISOLATION_TEST", "COLLAPSE", "UMEM_BEGIN", "UMEM_GET", "UMEM_RELEASE", "PIN_LONGTERM",
        "FILEMAP_DELETE", "FILEMAP_WRITEBACK", "MR_KEYS"]
    assert [int(k) for k in Kind] == list(range(1, 19))
    assert Kind.FOLIO_FAIL == 2 and Kind(13) is Kind.UMEM_GET
    assert set(EVENT_NAMES) == set(Kind)


@pytest.mark.pure
def test_counters_are_the_headers_enum_named_as_their_totals_keys():
    slots = [m.group(1) for m in re.finditer(r"^\s*RPC_(\w+),", HEADER_TEXT, re.M)]
    assert slots[-1] == "NR"
    assert list(COUNTERS) == [s.lower() for s in slots[:-1]]
    assert len(set(COUNTERS)) == len(COUNTERS)
    assert COUNTERS[0] == "pgmigrate_success" and COUNTERS[-1] == "lost_events"


def test_vmstat_keys_are_exactly_the_counters_marked_and_named_as_in_proc_vmstat():
    assert VMSTAT_KEYS == ("pgmigrate_success", "pgmigrate_fail", "thp_migration_success",
                           "thp_migration_fail", "thp_migration_split",
                           "compact_migrate_scanned", "compact_free_scanned",
                           "compact_isolated")
    vmstat = procfs.vmstat(exact=False)
    assert set(COUNTERS) & set(vmstat) == set(VMSTAT_KEYS)


@pytest.mark.pure
def test_every_counter_is_counted_by_some_probe():
    text = "".join(p.read_text() for p in sources.bpf_dir().glob("*.[ch]"))
    for name in COUNTERS:
        assert re.search(rf"rp_count\(RPC_{name.upper()},", text), name


@pytest.mark.pure
def test_every_kind_has_one_member_and_the_probes_write_that_members_fields():
    """Each function that starts an event of a kind (rp_init(&ev, RP_X)) touches only the
    union member the header gives that kind, and only fields that member has; together the
    probes write every field of every member, and no generic a..f is left."""
    members = {m.name: m for m in LAYOUT.members}
    assert sorted(k for m in LAYOUT.members for k in m.kinds) == sorted(k.name for k in Kind)
    written: dict[str, set[str]] = {m: set() for m in members}
    started: set[str] = set()
    for name, body in _bpf_functions():
        kinds = re.findall(r"rp_init\(&ev, RP_(\w+)\)", body)
        used = re.findall(r"\bev\.(\w+)\.(\w+)", body)
        assert not re.search(r"\bev(\.|->)[a-f]\b", body), name
        if not kinds:
            assert not used, (name, used)
            continue
        started.update(kinds)
        allowed = {LAYOUT.member_of(k).name for k in kinds}
        for member, fld in used:
            assert member in allowed, (name, kinds, member)
            assert fld in members[member].field_names, (name, member, fld)
        for member, fld in re.findall(r"\bev\.(\w+)\.(\w+)\s*=[^=]", body):
            written[member].add(fld)
        # an array filled by a call: the destination is its first argument
        for member, fld in re.findall(r"\w\(\s*&?ev\.(\w+)\.(\w+)\s*,", body):
            written[member].add(fld)
    assert started == {k.name for k in Kind}
    for m in LAYOUT.members:
        assert written[m.name] == set(m.field_names), m.name


@pytest.mark.pure
def test_record_is_the_headers_size_with_the_generic_fields_first():
    rec = LAYOUT.record
    assert ctypes.sizeof(rec) == LAYOUT.size == 96
    assert [n for n, _ in LAYOUT.generic] == ["ts_ns", "pid", "tid", "comm", "kind", "reason",
                                              "ret", "mode"]
    assert rec.comm.size == 16
    for m in LAYOUT.members:  # every member starts right after the generic fields
        assert getattr(rec, m.name).offset == 48
    r = rec()
    r.folio.pfn = 0x1234
    assert ctypes.string_at(ctypes.addressof(r) + 48, 8) == (0x1234).to_bytes(8, "little")
    assert LAYOUT.stages == {0: "move", 1: "unmap"}


@pytest.mark.pure
def test_check_compiled_takes_bccs_field_list_and_refuses_another():
    bcc_fields = ["ts_ns#u64", "pid#u32", "tid#u32", "comm#char[16]", "kind#u32",
                  "reason#s32", "ret#s32", "mode#u32",
                  "#union rp_event::(anonymous at rdmapin_events.h:145:2)"]
    LAYOUT.check_compiled(bcc_fields)
    with pytest.raises(L.LayoutError):
        LAYOUT.check_compiled(bcc_fields[:-1])  # no union: an older header
    old = bcc_fields[:-1] + [f"{c}#u64" for c in "abcdef"]
    with pytest.raises(L.LayoutError):
        LAYOUT.check_compiled(old)


@pytest.mark.pure
def test_parse_refuses_a_kind_without_a_member():
    text = HEADER_TEXT.replace("RP_COLLAPSE */", "*/")
    with pytest.raises(L.LayoutError, match="COLLAPSE"):
        L.parse(text)


@pytest.mark.pure
def test_parse_refuses_a_kind_named_by_two_members():
    text = HEADER_TEXT.replace("/* RP_PIN_LONGTERM */", "/* RP_PIN_LONGTERM, RP_MIGRATE */")
    with pytest.raises(L.LayoutError, match="MIGRATE"):
        L.parse(text)


@pytest.mark.pure
def test_parse_refuses_a_record_of_another_size():
    text = HEADER_TEXT.replace("#define RP_EVENT_SIZE 96", "#define RP_EVENT_SIZE 104")
    with pytest.raises(L.LayoutError, match="104"):
        L.parse(text)
    bigger = HEADER_TEXT.replace("\tu64 latency_ns;\t\t/* since mm_migrate_pages_start",
                                 "\tu64 extra;\n\tu64 latency_ns;\t\t/* since")
    with pytest.raises(L.LayoutError, match="RP_EVENT_SIZE"):
        L.parse(bigger)


@pytest.mark.pure
def test_a_new_kind_and_field_in_the_header_is_all_the_user_side_needs():
    text = HEADER_TEXT.replace("\tRP_PIN_LONGTERM,", "\tRP_PIN_LONGTERM,\n\tRP_NEW_THING,")
    text = text.replace("struct rp_pin {", "struct rp_new {\n\tu64 x;\n\tu32 y;\n};\n\n"
                        "struct rp_pin {")
    text = text.replace("\t\tstruct rp_pin pin;", "\t\tstruct rp_new new;\t/* RP_NEW_THING */\n"
                        "\t\tstruct rp_pin pin;")
    lay = L.parse(text)
    assert lay.kinds["NEW_THING"] == 16
    assert lay.member_of("NEW_THING").fields == (("x", "u64"), ("y", "u32"))
    r = lay.record()
    r.new.y = 7
    assert r.new.y == 7 and ctypes.sizeof(r) == 96
