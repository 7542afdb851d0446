"""Decoding (rdmapin.trace.decode) on synthetic records built from the header's layout: one
pure function per kind gives the PFNs, reason and detail the JSON lines carry; attribution
then runs as its own step in the tracer (its callback, fed the same records by address)."""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Any

import numpy as np
import pytest

from rdmapin.trace import Kind, Tracer
from rdmapin.trace import decode as D
from rdmapin.trace.attribution import Owner

pytestmark = pytest.mark.pure

NAMES = D.Names(migrate_reasons={0: "compaction", 5: "longterm_pin"},
                compaction_status={1: "complete", 2: "continue"},
                collapse_status={1: "succeeded", 7: "pinned"})
T0 = 1_000_000_000


def rec(kind: Kind, *, reason: int = -1, ret: int = 0, mode: int = 0, tid: int = 7,
        pid: int = 5, ts_ns: int = T0 + 2_500_000, **fields: int) -> Any:
    """A record as the probes write it: generic fields, then the kind's named ones."""
    r = D.Record()
    r.ts_ns, r.pid, r.tid, r.comm = ts_ns, pid, tid, b"worker"
    r.kind, r.reason, r.ret, r.mode = kind, reason, ret, mode
    member = getattr(r, D.MEMBERS[kind])
    for name, value in fields.items():
        setattr(member, name, value)
    return r


# kind -> (record fields, the event's to_dict() but owners)
CASES: dict[Kind, tuple[dict[str, Any], dict[str, Any]]] = {
    Kind.MIGRATE: (
        {"reason": 5, "mode": 2, "succeeded": 30, "failed": 2, "thp_succeeded": 1,
         "thp_failed": 0, "thp_split": 1, "latency_ns": 134_111},
        {"reason": "longterm_pin", "pfn": None, "pfn_end": None,
         "detail": {"succeeded": 30, "failed": 2, "thp_succeeded": 1, "thp_failed": 0,
                    "thp_split": 1, "mode": 2, "latency_us": 134.111}}),
    Kind.FOLIO_FAIL: (
        {"reason": 9, "ret": -11, "pfn": 0x4242, "order": 9, "refcount": 1027,
         "mapcount": 1, "pincount": 1, "stage": 1},
        {"reason": "9", "pfn": 0x4242, "pfn_end": None,
         "detail": {"order": 9, "refcount": 1027, "mapcount": 1, "pincount": 1,
                    "errno": "EAGAIN", "stage": "unmap"}}),
    Kind.COMPACT_BEGIN: (
        {"zone_start": 1, "migrate_pfn": 1, "free_pfn": 3584, "zone_end": 4096, "sync": 1},
        {"reason": "", "pfn": 1, "pfn_end": 4096,
         "detail": {"migrate_pfn": 1, "free_pfn": 3584, "sync": True}}),
    Kind.COMPACT_END: (
        {"ret": 1, "zone_start": 1, "migrate_pfn": 3584, "free_pfn": 3584, "zone_end": 4096,
         "sync": 0, "latency_ns": 0},
        {"reason": "complete", "pfn": 1, "pfn_end": 4096,
         "detail": {"migrate_pfn": 3584, "free_pfn": 3584, "sync": False,
                    "latency_us": None}}),
    Kind.ISOLATE_MIGRATE: (
        {"start_pfn": 512, "end_pfn": 1024, "nr_scanned": 511, "nr_taken": 3},
        {"reason": "", "pfn": 512, "pfn_end": 1024, "detail": {"scanned": 511, "taken": 3}}),
    Kind.ISOLATE_FREE: (
        {"start_pfn": 2048, "end_pfn": 2560, "nr_scanned": 20, "nr_taken": 0},
        {"reason": "", "pfn": 2048, "pfn_end": 2560, "detail": {"scanned": 20, "taken": 0}}),
    Kind.COMPACT_MIGRATE: (
        {"nr_migrated": 32, "nr_failed": 4},
        {"reason": "", "pfn": None, "pfn_end": None, "detail": {"migrated": 32, "failed": 4}}),
    Kind.COMPACT_FINISHED: (
        {"ret": 3, "nid": 1, "zone": 2, "order": 9},
        {"reason": "3", "pfn": None, "pfn_end": None,
         "detail": {"nid": 1, "zone": 2, "order": 9}}),
    Kind.COMPACT_DEFERRED: (
        {"nid": 0, "zone": 1, "order": 4, "considered": 2, "defer_shift": 3},
        {"reason": "", "pfn": None, "pfn_end": None,
         "detail": {"nid": 0, "zone": 1, "order": 4, "considered": 2, "defer_shift": 3}}),
    Kind.ISOLATION_TEST: (
        {"ret": -16, "start_pfn": 0x8000, "end_pfn": 0x8200, "fin_pfn": 0x8010},
        {"reason": "busy", "pfn": 0x8000, "pfn_end": 0x8200,
         "detail": {"fin_pfn": 0x8010, "busy": True}}),
    Kind.COLLAPSE: (
        {"ret": 7, "mm": 0xffff888000000000, "isolated": 1},
        {"reason": "pinned", "pfn": None, "pfn_end": None, "detail": {"isolated": 1}}),
    Kind.UMEM_BEGIN: (
        {"addr": 0x7f0000000000, "size": 1 << 21, "access": 7},
        {"reason": "", "pfn": None, "pfn_end": None,
         "detail": {"addr": 0x7f0000000000, "length": 1 << 21, "access": 7}}),
    Kind.UMEM_GET: (
        {"ret": -12, "addr": 0x7f0000000000, "size": 1 << 21, "access": 7},
        {"reason": "ENOMEM", "pfn": None, "pfn_end": None,
         "detail": {"addr": 0x7f0000000000, "length": 1 << 21, "access": 7, "umem": 0}}),
    Kind.UMEM_RELEASE: (
        {"umem": 0xffff888012345000},
        {"reason": "", "pfn": None, "pfn_end": None, "detail": {"umem": 0xffff888012345000}}),
    Kind.PIN_LONGTERM: (
        {"start": 0x7f1000000000, "nr_pages": 0, "requested": 16, "gup_flags": 0x10000,
         "ret": -14},
        {"reason": "EFAULT", "pfn": None, "pfn_end": None,
         "detail": {"addr": 0x7f1000000000, "nr_pages": 0, "requested": 16,
                    "gup_flags": 0x10000}}),
    Kind.FILEMAP_DELETE: (
        {"pfn": 0x12340, "ino": 12, "index": 3, "dev": 0x10300001, "nr_pages": 4,
         "refcount": 1026},
        {"reason": "", "pfn": 0x12340, "pfn_end": 0x12344,
         "detail": {"ino": 12, "index": 3, "dev": 0x10300001, "nr_pages": 4,
                    "refcount": 1026}}),
    Kind.FILEMAP_WRITEBACK: (
        {"pfn": 0x2a001, "ino": 13, "index": 40, "dev": 0x10300001, "nr_pages": 1,
         "refcount": 1027},
        {"reason": "", "pfn": 0x2a001, "pfn_end": None,
         "detail": {"ino": 13, "index": 40, "dev": 0x10300001, "nr_pages": 1,
                    "refcount": 1027}}),
    Kind.MR_KEYS: (
        {"umem": 0xffff888012345000, "get_ts": T0 + 1000, "length": 1 << 21, "lkey": 0x1fa,
         "rkey": 0x1fa, "device": b"rxe0"},
        {"reason": "", "pfn": None, "pfn_end": None,
         "detail": {"umem": 0xffff888012345000, "umem_get_ts": T0 + 1000, "lkey": 0x1fa,
                    "rkey": 0x1fa, "length": 1 << 21, "device": "rxe0"}}),
}


def test_every_kind_has_a_decoder_and_a_member():
    assert set(D.DECODERS) == set(Kind) == set(D.MEMBERS) == set(CASES)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_decode_gives_the_events_pfns_reason_and_detail(kind):
    fields, want = CASES[kind]
    ev = D.decode(rec(kind, **fields), T0, NAMES)
    got = ev.to_dict()
    assert got.pop("owners") == []
    assert got == {"ts": 0.0025, "event": ev.name, "pid": 5, "tid": 7, "comm": "worker",
                   **want}
    assert list(got["detail"]) == list(want["detail"])  # the JSON keys' order too


def test_decode_is_pure():
    r = rec(Kind.FOLIO_FAIL, pfn=9, ret=-11)
    before = bytes(r)
    assert D.decode(r, T0, NAMES) == D.decode(r, T0, NAMES)
    assert bytes(r) == before


def test_decode_refuses_a_kind_the_header_does_not_declare():
    r = rec(Kind.MIGRATE)
    r.kind = 99
    with pytest.raises(ValueError):
        D.decode(r, T0, NAMES)


def _tracer() -> Tracer:
    """A tracer not started: its callback and attribution, no program."""
    t = Tracer(inventory=False)
    t._t0_ns, t._names = T0, NAMES
    return t


def _feed(t: Tracer, r: Any) -> None:
    """What bcc's callback hands the tracer: the record's address and size."""
    t._on_raw(None, ctypes.addressof(r), ctypes.sizeof(r))


def test_attribution_follows_decoding_in_the_tracers_callback():
    """A folio failure at a PFN an owner pins names it; the migrate_pages call of the same
    thread then lists it; a compaction scan over its pageblock counts its pinned PFNs; a
    busy isolation test names it through its first busy PFN."""
    t = _tracer()
    o = t.owners.add(Owner(pid=5, comm="worker", addr=0x1000, length=4 << 12,
                           source="ledger"), np.array([0x4240, 0x4241, 0x4242, 0x4243],
                                                      dtype=np.uint64))
    _feed(t, rec(Kind.FOLIO_FAIL, ret=-11, pfn=0x4242, stage=0))
    _feed(t, rec(Kind.FOLIO_FAIL, ret=-11, pfn=0x9999, stage=0, tid=8))
    _feed(t, rec(Kind.MIGRATE, failed=1, succeeded=3))
    _feed(t, rec(Kind.ISOLATE_MIGRATE, start_pfn=0x4200, end_pfn=0x4400, nr_scanned=512))
    _feed(t, rec(Kind.ISOLATION_TEST, start_pfn=0x4200, end_pfn=0x4400, fin_pfn=0x4241))
    _feed(t, rec(Kind.ISOLATION_TEST, start_pfn=0x4200, end_pfn=0x4400, fin_pfn=0x4400))
    fail, unowned, migrate, scan, busy, clear = t.events()
    assert fail.owners == [o] and unowned.owners == [] and unowned.owner_label() == "unowned"
    assert migrate.owners == [o]
    assert scan.owners == [o] and scan.detail == {"scanned": 512, "taken": 0, "pinned": 4}
    assert busy.owners == [o] and busy.reason == "busy"
    assert clear.owners == [] and clear.reason == "isolated"


def test_attribution_of_a_registration_goes_through_the_ledger():
    t = _tracer()
    _feed(t, rec(Kind.UMEM_BEGIN, addr=0x7f0000000000, size=1 << 21, access=1))
    pending = t.ledger.registering(7)
    assert pending is not None and (pending.addr, pending.length) == (0x7f0000000000, 1 << 21)
    _feed(t, rec(Kind.MIGRATE, reason=5, failed=0, succeeded=512))
    _feed(t, rec(Kind.UMEM_GET, ret=-12, addr=0x7f0000000000, size=1 << 21, access=1))
    begin, migrate, get = t.events()
    assert begin.owners == [pending]
    assert migrate.reason == "longterm_pin" and migrate.owners == [pending]
    assert get.reason == "ENOMEM" and t.ledger.registering(7) is None


def test_a_pinned_file_page_written_back_names_its_owner_and_the_mapped_file(tmp_path):
    """Writeback of a pinned page cache page (bpf/writeback.c's record) is attributed by
    PFN, like a deletion; the owner becomes of kind file, named by the path its process maps
    at the owner's address when that mapping is of the event's inode (this process's real
    /proc/self/maps); a PFN nobody pins stays unowned."""
    path = tmp_path / "pinned-file"
    path.write_bytes(b"\0" * 8192)
    ino = os.stat(path).st_ino
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 8192) as m:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))  # the view is dropped at once
        t = _tracer()
        o = t.owners.add(Owner(pid=os.getpid(), comm="worker", addr=addr, length=8192,
                               source="ledger"), np.array([0x2a000, 0x2a001], dtype=np.uint64))
        _feed(t, rec(Kind.FILEMAP_WRITEBACK, pfn=0x2a001, ino=ino, index=1, nr_pages=1,
                     refcount=1027))
        _feed(t, rec(Kind.FILEMAP_WRITEBACK, pfn=0x77777, ino=ino + 1, index=0, nr_pages=1,
                     refcount=1025))
        written, stray = t.events()
    assert written.name == "pagecache_writeback"
    assert written.owners == [o] and written.detail["file"] == str(path)
    assert o.kind == "file" and o.file == str(path)
    assert stray.owners == [] and "file" not in stray.detail
