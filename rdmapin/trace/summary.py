"""Interval and final summaries: failures by reason and by owner (a folio counts once per
migration call, as in pgmigrate_fail), compaction scan/skip ratios over pinned pageblocks,
pinned page cache dropped or written back per owner, latency histograms, lost events. Fed
one event at a time so the CLI need not keep them."""

from __future__ import annotations

import collections
from typing import Any

from rdmapin.kernel.printable import escape
from rdmapin.trace.attribution import Owner
from rdmapin.trace.events import Event, Kind


def _key(o: Owner | None) -> tuple:
    if o is None:
        return ("unowned",)
    return (o.pid, o.addr, o.length)


class Summary:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.migrate_pages: collections.Counter[tuple[str, str]] = collections.Counter()
        self.folio_failures: collections.Counter[tuple] = collections.Counter()
        self.folio_pfns: dict[tuple, set[int]] = collections.defaultdict(set)
        self.compact: dict[tuple, dict[str, int]] = collections.defaultdict(
            lambda: {"blocks": 0, "pinned": 0, "scanned": 0, "taken": 0})
        self.compact_all = {"blocks": 0, "scanned": 0, "taken": 0}
        self.isolation_busy: collections.Counter[tuple] = collections.Counter()
        self.pagecache: collections.Counter[tuple] = collections.Counter()  # pages dropped
        self.writeback: collections.Counter[tuple] = collections.Counter()  # pages written
        self.owners: dict[tuple, Owner | None] = {("unowned",): None}
        self.events = 0

    def feed(self, ev: Event) -> None:
        self.events += 1
        if ev.kind == Kind.MIGRATE:
            reason = ev.reason or "?"
            self.migrate_pages[(reason, "succeeded")] += ev.detail["succeeded"]
            self.migrate_pages[(reason, "failed")] += ev.detail["failed"]
        elif ev.kind == Kind.FOLIO_FAIL:
            o = ev.owners[0] if ev.owners else None
            k = _key(o)
            self.owners[k] = o
            self.folio_failures[k] += 1
            self.folio_pfns[k].add(ev.pfn)
        elif ev.kind in (Kind.ISOLATE_MIGRATE, Kind.ISOLATE_FREE):
            # compact_all: the migrate scanner (what compact_migrate_scanned counts); per
            # owner: pageblocks either scanner passed over holding its pinned PFNs
            if ev.kind == Kind.ISOLATE_MIGRATE:
                self.compact_all["blocks"] += 1
                self.compact_all["scanned"] += ev.detail["scanned"]
                self.compact_all["taken"] += ev.detail["taken"]
            for o in ev.owners:
                k = _key(o)
                self.owners[k] = o
                row = self.compact[k]
                row["blocks"] += 1
                row["scanned"] += ev.detail["scanned"]
                row["taken"] += ev.detail["taken"]
            if ev.owners:
                # pinned PFNs of the block, split among owners in proportion is not needed:
                # blocks rarely hold two owners; count them against the first
                self.compact[_key(ev.owners[0])]["pinned"] += ev.detail.get("pinned", 0)
        elif ev.kind in (Kind.FILEMAP_DELETE, Kind.FILEMAP_WRITEBACK):
            # deleted: a pinned page its file no longer has, the MR and the file now differ
            # there; written back: a pinned page on its way to disk while a device may
            # write it
            per = self.pagecache if ev.kind == Kind.FILEMAP_DELETE else self.writeback
            for o in ev.owners or [None]:
                self.owners[_key(o)] = o
                per[_key(o)] += ev.detail["nr_pages"]
        elif ev.kind == Kind.ISOLATION_TEST and ev.detail.get("busy"):
            o = ev.owners[0] if ev.owners else None
            self.owners[_key(o)] = o
            self.isolation_busy[_key(o)] += 1

    @staticmethod
    def _owner_cols(o: Owner | None) -> dict[str, Any]:
        if o is None:
            return {"owner": "unowned", "pid": None, "comm": None, "lkey": None,
                    "candidates": [], "addr": None, "length": None}
        return {"owner": o.label(), "pid": o.pid, "comm": o.comm, "lkey": o.lkey,
                "candidates": list(o.candidates), "addr": o.addr, "length": o.length}

    def failures_by_owner(self) -> list[dict[str, Any]]:
        rows = []
        for k, n in self.folio_failures.most_common():
            rows.append({**self._owner_cols(self.owners[k]), "failures": n,
                         "pfns": len(self.folio_pfns[k])})
        return rows

    def compaction_by_owner(self) -> list[dict[str, Any]]:
        rows = []
        for k, r in self.compact.items():
            ratio = 1 - r["taken"] / r["scanned"] if r["scanned"] else None
            rows.append({**self._owner_cols(self.owners[k]), **r, "skip_ratio": ratio})
        return sorted(rows, key=lambda r: -r["pinned"])

    def _file_rows(self, pages: collections.Counter[tuple]) -> list[dict[str, Any]]:
        return [{**self._owner_cols(self.owners[k]), "pages": n,
                 "file": self.owners[k].file if self.owners[k] else None}
                for k, n in pages.most_common()]

    def to_dict(self, totals: dict[str, int] | None = None,
                hists: dict[str, dict[int, int]] | None = None) -> dict[str, Any]:
        by_reason: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for (reason, what), n in self.migrate_pages.items():
            by_reason[reason][what] = n
        a = self.compact_all
        return {
            "migrate_by_reason": dict(by_reason),
            "failures_by_owner": self.failures_by_owner(),
            "compaction": {**a, "skip_ratio": 1 - a["taken"] / a["scanned"] if a["scanned"]
                           else None},
            "compaction_by_owner": self.compaction_by_owner(),
            "isolation_busy_by_owner": [
                {**self._owner_cols(self.owners[k]), "tests": n}
                for k, n in self.isolation_busy.most_common()],
            "pagecache_by_owner": self._file_rows(self.pagecache),
            "writeback_by_owner": self._file_rows(self.writeback),
            "totals": totals or {},
            "histograms": hists or {},
        }


def _hist_lines(name: str, buckets: dict[int, int]) -> list[str]:
    if not buckets:
        return []
    lines = [f"{name:>24} : count    distribution"]
    top = max(buckets.values())
    for b in range(min(buckets), max(buckets) + 1):
        n = buckets.get(b, 0)
        lo, hi = (0 if b == 0 else 1 << (b - 1)), (1 << b) - 1
        bar = "*" * round(30 * n / top) if top else ""
        lines.append(f"{lo:>11} -> {hi:<10} : {n:<8} |{bar:<30}|")
    return lines


def render(s: Summary, totals: dict[str, int], hists: dict[str, dict[int, int]],
           title: str = "summary") -> str:
    """People's view: one idea per line, aligned, units in the headers; owners' names
    escaped (rdmapin.kernel.printable)."""
    out = [f"--- {title} ---"]
    d = s.to_dict(totals, hists)
    if d["migrate_by_reason"]:
        out.append(f"{'MIGRATE REASON':<20} {'PAGES OK':>10} {'PAGES FAILED':>13}")
        for reason, r in sorted(d["migrate_by_reason"].items()):
            out.append(f"{reason:<20} {r.get('succeeded', 0):>10} {r.get('failed', 0):>13}")
    if d["failures_by_owner"]:
        out.append(f"{'FOLIO FAILURES':>15} {'PFNS':>6}  OWNER")
        for r in d["failures_by_owner"]:
            out.append(f"{r['failures']:>15} {r['pfns']:>6}  {escape(r['owner'])}")
    c = d["compaction"]
    if c["blocks"]:
        ratio = f"{c['skip_ratio']:.3f}" if c["skip_ratio"] is not None else "-"
        out.append(f"compaction: {c['blocks']} blocks, {c['scanned']} pages scanned, "
                   f"{c['taken']} taken, skip ratio {ratio}")
        if d["compaction_by_owner"]:
            out.append(f"{'BLOCKS':>8} {'PINNED':>8} {'SCANNED':>8} {'TAKEN':>8} "
                       f"{'SKIP':>6}  OWNER")
            for r in d["compaction_by_owner"]:
                sk = f"{r['skip_ratio']:.3f}" if r["skip_ratio"] is not None else "-"
                out.append(f"{r['blocks']:>8} {r['pinned']:>8} {r['scanned']:>8} "
                           f"{r['taken']:>8} {sk:>6}  {escape(r['owner'])}")
    for r in d["isolation_busy_by_owner"]:
        out.append(f"isolation refused {r['tests']} times: {escape(r['owner'])}")
    if d["pagecache_by_owner"]:
        out.append(f"{'PAGECACHE DROPPED':>17}  OWNER (pinned pages its file no longer has)")
        for r in d["pagecache_by_owner"]:
            out.append(f"{r['pages']:>17}  {escape(r['owner'])}")
    if d["writeback_by_owner"]:
        out.append(f"{'PAGECACHE WRITTEN':>17}  OWNER (pinned pages written back under the pin)")
        for r in d["writeback_by_owner"]:
            out.append(f"{r['pages']:>17}  {escape(r['owner'])}")
    for name, buckets in sorted(hists.items()):
        out += _hist_lines(name, buckets)
    keys = [k for k, v in totals.items() if v]
    if keys:
        out.append("totals: " + " ".join(f"{k}={totals[k]}" for k in keys))
    out.append(f"lost events: {totals.get('lost_events', 0)}")
    return "\n".join(out)
