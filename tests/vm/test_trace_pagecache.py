"""Pinned page cache under truncation and writeback: an MR over a shared ext4 file mapping
keeps its pages when the file is cut short, so the kernel deletes pinned pages from the
file's page cache (filemap:mm_filemap_delete_from_page_cache) and the MR and the file part
ways there; and the file system writes pinned pages back (__folio_start_writeback) while a
device may be writing them. The tracer's events name the MR (lkey) and the file, one page
per truncated or written page, and their PFNs are the ones the MR pinned (pagemap).

Needs a pmem guest:
`ci/vm/run --pmem 1G -- ci/vm/guest-pmem python -m pytest tests/vm/test_trace_pagecache.py`
(its page-cache ext4 at $RDMAPIN_PMEM_PAGECACHE). Writable on 6.1; read-only on 6.12, where
mm/gup.c refuses a writable long-term pin of a written-back file mapping (since 6.5).
"""

from __future__ import annotations

import os
import time

import pytest

import rdmapin
from rdmapin import Access
from rdmapin.kernel import kpageflags, pagemap, procfs
from rdmapin.trace import Kind, Tracer
from rdmapin.trace.summary import Summary, render

pytest_plugins = ("verbs_fixtures",)
pytestmark = [pytest.mark.pmem, pytest.mark.rdma, pytest.mark.kprobes]

PAGE = 4096
NPAGES = 64
KEEP = 24  # pages the truncation leaves: NPAGES - KEEP are cut away under the pin
WRITTEN = range(8, 24)  # pages write(2) dirties under the pin, then fsync writes back
WRITE_PIN_RULE = tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (6, 5)


def _owner_read(t: Tracer, addr: int, timeout: float = 120.0):
    """The tracer's owner of [addr, ...) once its pages are in the owner map (the ledger
    reads an MR's pagemap on its own thread, shortly after ib_umem_get)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for o in list(t.owners.owners.values()):
            if o.addr == addr and o.pages == NPAGES:
                return o
        time.sleep(0.05)
    pytest.fail(f"the tracer never read the MR's {NPAGES} pages ({t.unavailable})")


def _summary(t: Tracer) -> tuple[Summary, str]:
    """The run's summary as the CLI prints it at the end (printed: the README shows it)."""
    summary = Summary()
    for e in t.events():
        summary.feed(e)
    text = render(summary, t.totals(), {})
    print(text)
    return summary, text


def test_truncating_a_registered_file_is_attributed_to_the_mr_and_the_file(pd, pins):
    path = os.path.join(os.environ["RDMAPIN_PMEM_PAGECACHE"], "traced-pagecache")
    buf = rdmapin.alloc(NPAGES * PAGE, path=path)
    ino = os.stat(path).st_ino
    access = Access.REMOTE_READ if WRITE_PIN_RULE else Access.LOCAL_WRITE
    try:
        assert buf.backing == "pagecache"
        buf[:] = 5
        with Tracer() as t:
            assert t.program.has("umem"), t.unavailable
            assert "filemap.c" in t.program.files, t.unavailable
            with pd.register(buf, access) as mr:
                addr = mr.addr
                owner = _owner_read(t, addr)
                pinned = pagemap.pfns(pagemap.read("self", addr, NPAGES * PAGE))
                cut = {int(p) for p in pinned[KEEP:]}
                t0 = t.totals()
                os.truncate(path, KEEP * PAGE)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    ours = [e for e in t.events(Kind.FILEMAP_DELETE) if owner in e.owners]
                    if sum(e.detail["nr_pages"] for e in ours) >= NPAGES - KEEP:
                        break
                    time.sleep(0.1)
                t1 = t.totals()
                lkey = mr.lkey
        summary, text = _summary(t)
    finally:
        del buf
        os.unlink(path)
    # exactly the truncated pages, each once, each the PFN the MR pinned
    assert sum(e.detail["nr_pages"] for e in ours) == NPAGES - KEEP
    got = {p for e in ours for p in range(e.pfn, e.pfn + e.detail["nr_pages"])}
    assert got == cut and len(cut) == NPAGES - KEEP
    assert sorted(e.detail["index"] for e in ours) == list(range(KEEP, NPAGES))
    for e in ours:
        assert e.detail["ino"] == ino
        assert e.detail["file"] == path
        assert e.pid == os.getpid()  # the truncating task: this one
        (o,) = e.owners
        assert (o.lkey, o.file, o.kind) == (lkey, path, "file")
        assert o.label().endswith(f"file={path}") and f"lkey={lkey:#x}" in o.label()
    # the kernel counted at least these as deleted pinned pages (others may pin page cache
    # too, so the system-wide counters bound ours from above)
    assert t1["filemap_pinned_deletes"] - t0["filemap_pinned_deletes"] >= NPAGES - KEEP
    assert t1["filemap_deletes"] - t0["filemap_deletes"] >= NPAGES - KEEP
    assert t1["lost_events"] == 0
    row = next(r for r in summary.to_dict()["pagecache_by_owner"] if r["lkey"] == lkey)
    assert (row["pages"], row["file"]) == (NPAGES - KEEP, path)
    assert f"{NPAGES - KEEP:>17}  {owner.label()}" in text


def _dirty(pfns) -> set[int]:
    """The PFNs the kernel has marked dirty (PG_dirty in /proc/kpageflags)."""
    flags = kpageflags.read(pfns)
    return {int(p) for p in pfns[kpageflags.bit(flags, kpageflags.KPF.DIRTY)]}


def _written(t: Tracer, owner, since: int, want: int, timeout: float = 60.0) -> list:
    """The owner's writeback events after the first ``since`` of them, once ``want`` pages
    have come (or the timeout: the caller's assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        ours = [e for e in t.events(Kind.FILEMAP_WRITEBACK) if owner in e.owners][since:]
        if sum(e.detail["nr_pages"] for e in ours) >= want or time.monotonic() > deadline:
            return ours
        time.sleep(0.1)


def _check(events: list, pfns: set[int], indices: list[int], ino: int, path: str,
           lkey: int) -> None:
    """One event per page, each a PFN the MR pinned at its index, naming the MR and file."""
    assert sum(e.detail["nr_pages"] for e in events) == len(pfns)
    assert {p for e in events for p in range(e.pfn, e.pfn + e.detail["nr_pages"])} == pfns
    assert sorted(e.detail["index"] for e in events) == indices
    for e in events:
        assert (e.detail["ino"], e.detail["file"]) == (ino, path)
        (o,) = e.owners
        assert (o.lkey, o.file, o.kind) == (lkey, path, "file")


def test_writeback_of_a_registered_file_is_attributed_to_the_mr_and_the_file(pd, pins):
    """Pages of the registered file dirtied under the pin and written back (fsync) are
    events, exactly the pinned pages the kernel had marked dirty (kpageflags): first the
    ones the registration dirtied (6.1's writable pin write-faults the shared mapping, so
    page_mkwrite dirties every page; 6.12's read-only pin dirties none), then the ones
    write(2) dirtied (through the file, not the MR: on 6.12 the MR is read-only)."""
    path = os.path.join(os.environ["RDMAPIN_PMEM_PAGECACHE"], "traced-writeback")
    buf = rdmapin.alloc(NPAGES * PAGE, path=path)
    ino = os.stat(path).st_ino
    access = Access.REMOTE_READ if WRITE_PIN_RULE else Access.LOCAL_WRITE
    fd = os.open(path, os.O_RDWR)
    try:
        buf[:] = 5
        os.fsync(fd)  # clean before the pin: what is dirty later, the pin or write(2) did
        with Tracer() as t:
            assert t.program.has("writeback"), t.unavailable
            with pd.register(buf, access) as mr:
                owner = _owner_read(t, mr.addr)
                pinned = pagemap.pfns(pagemap.read("self", mr.addr, NPAGES * PAGE))
                by_pin = _dirty(pinned)
                early = _written(t, owner, 0, 0, timeout=0)  # the flusher's, if it came first
                v0, t0 = procfs.vmstat(), t.totals()
                os.fsync(fd)
                first = _written(t, owner, 0, len(by_pin) + len(early))
                n = len(first)
                os.pwrite(fd, b"\x07" * (len(WRITTEN) * PAGE), WRITTEN[0] * PAGE)
                by_write = _dirty(pinned)
                v1, t1 = procfs.vmstat(), t.totals()
                os.fsync(fd)
                second = _written(t, owner, n, len(WRITTEN))
                v2, t2 = procfs.vmstat(), t.totals()
                lkey = mr.lkey
        summary, text = _summary(t)
    finally:
        os.close(fd)
        del buf
        os.unlink(path)
    index = {int(p): i for i, p in enumerate(pinned)}
    # the registration's own dirtying: every page under a writable pin, none read-only
    # (what the flusher wrote back before kpageflags was read was dirty then too)
    by_pin |= {p for e in early for p in range(e.pfn, e.pfn + e.detail["nr_pages"])}
    assert by_pin == (set() if WRITE_PIN_RULE else set(index))
    _check(first, by_pin, sorted(index[p] for p in by_pin), ino, path, lkey)
    # write(2) dirtied exactly its pages of the pinned page cache, and those were written
    assert by_write == {int(pinned[i]) for i in WRITTEN}
    _check(second, by_write, list(WRITTEN), ino, path, lkey)
    # the kernel wrote at least these (nr_written counts completions system-wide), and the
    # probe counted them among the pinned pages whose writeback started
    assert v1["nr_written"] - v0["nr_written"] >= len(first)
    assert v2["nr_written"] - v1["nr_written"] >= len(WRITTEN)
    assert t2["writeback_pinned"] - t1["writeback_pinned"] >= len(WRITTEN)
    assert t2["writeback_pages"] - t1["writeback_pages"] >= t2["writeback_pinned"] - t1[
        "writeback_pinned"]
    assert t1["writeback_pinned"] - t0["writeback_pinned"] >= len(first)
    assert t2["lost_events"] == 0
    row = next(r for r in summary.to_dict()["writeback_by_owner"] if r["lkey"] == lkey)
    assert (row["pages"], row["file"]) == (len(first) + len(WRITTEN), path)
    assert f"{len(first) + len(WRITTEN):>17}  {owner.label()}" in text
