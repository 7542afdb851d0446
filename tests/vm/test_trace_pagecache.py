"""Pinned page cache under truncation: an MR over a shared ext4 file mapping keeps its pages
when the file is cut short, so the kernel deletes pinned pages from the file's page cache
(filemap:mm_filemap_delete_from_page_cache) and the MR and the file part ways there. The
tracer's events name the MR (lkey) and the file, one page per truncated page, and their PFNs
are the ones the MR pinned (pagemap before the truncation).

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
from rdmapin.kernel import pagemap
from rdmapin.trace import Kind, Tracer
from rdmapin.trace.summary import Summary, render

pytest_plugins = ("verbs_fixtures",)
pytestmark = [pytest.mark.pmem, pytest.mark.rdma, pytest.mark.kprobes]

PAGE = 4096
NPAGES = 64
KEEP = 24  # pages the truncation leaves: NPAGES - KEEP are cut away under the pin
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
        summary = Summary()
        for e in t.events():
            summary.feed(e)
        text = render(summary, t.totals(), {})
        print(text)
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
