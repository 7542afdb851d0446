"""The exporter's moving parts: a scan thread per interval, the tracer started on a thread
of its own (a bcc compile takes tens of seconds; the gauges serve meanwhile, and on when it
cannot attach), and one published exposition that every scrape and the textfile share.

A scan renders the exposition once when it finishes; a scrape only copies those bytes, so
any number of concurrent scrapes costs one scan. A scan that fails is counted
(``rdmapin_scan_errors_total``) and logged, and the last good values keep serving: a
traceback never reaches a scrape.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rdmapin import __version__
from rdmapin.exporter import families, scan, textfile

log = logging.getLogger(__name__)


class Exporter:
    """Scans every ``interval`` s (zones and doctor every ``slow_interval`` s), traces unless
    ``trace`` is False, and publishes to ``exposition()`` and, with ``textfile``, to
    DIR/rdmapin.prom."""

    def __init__(self, *, interval: float = 15.0, slow_interval: float = 300.0, top: int = 10,
                 trace: bool = True, textfile_dir: Path | None = None,
                 note: Callable[[str], None] | None = None) -> None:
        self.note = note or (lambda line: log.warning("%s", line))
        self.interval, self.slow_interval = interval, slow_interval
        self.want_trace = trace
        self.textfile_dir = textfile_dir
        self.view = families.View(
            top=top, settings={"version": __version__, "top": str(top)},
            intervals={"processes": interval, "zones": slow_interval, "doctor": slow_interval},
            textfile_errors=0 if textfile_dir is not None else None)
        self.tracer: Any = None
        self.tracer_error: str | None = None
        self._summary: Any = None
        self._summary_lock = threading.Lock()
        self._lock = threading.Lock()  # the view and the published bytes
        self._body = families.render(self.view)
        self._stop = threading.Event()
        self._first_scan = threading.Event()
        self._threads: list[threading.Thread] = []
        self._said: set[str] = set()

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> Exporter:
        loops = [("processes", self._processes_loop), ("slow", self._slow_loop)]
        if self.want_trace:
            loops.append(("tracer", self._start_tracer))
        for name, target in loops:
            t = threading.Thread(target=target, name=f"rdmapin-exporter-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, scan_wait: float = 5.0) -> None:
        """Stop the scans and detach the tracer. A scan in progress (a whole-memory zones
        scan takes seconds) is waited for ``scan_wait`` s at most: it only reads files. A
        tracer compile in progress is waited for: what it attaches is detached, never left
        behind."""
        self._stop.set()
        for t in self._threads:
            t.join(None if t.name.endswith("tracer") else scan_wait)
        self._threads.clear()
        if self.tracer is not None:
            self.tracer.stop()
            self.tracer = None

    def __enter__(self) -> Exporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def exposition(self) -> bytes:
        with self._lock:
            return self._body

    def wait_first_scan(self, timeout: float | None = None) -> bool:
        return self._first_scan.wait(timeout)

    # scans ----------------------------------------------------------------------------------
    def _run_scan(self, kind: str, fn: Any) -> Any:
        """``fn()``, or None after counting and logging why it failed."""
        try:
            result = fn()
        except Exception as e:  # counted and logged; the last values keep serving
            with self._lock:
                self.view.errors[kind] = self.view.errors.get(kind, 0) + 1
            self._say(f"{kind} scan failed: {type(e).__name__}: {e}")
            log.debug("%s scan", kind, exc_info=True)
            return None
        with self._lock:
            self.view.scans[kind] = self.view.scans.get(kind, 0) + 1
        return result

    def _processes_loop(self) -> None:
        while not self._stop.is_set():
            result = self._run_scan("processes", scan.scan_processes)
            if result is not None:
                for why in result.limits:
                    self._say(why)
                with self._lock:
                    self.view.processes = result
                    self.view.vanished += result.vanished
            self._publish()
            self._first_scan.set()
            self._stop.wait(self.interval)

    def _slow_loop(self) -> None:
        self._first_scan.wait()
        while not self._stop.is_set():
            with self._lock:
                last = self.view.processes
            pfns = last.pinned_pfns() if last is not None else np.empty(0, np.uint64)
            zones = self._run_scan("zones", functools.partial(scan.scan_zones, pfns))
            if self._stop.is_set():
                return
            doctor = self._run_scan("doctor", scan.scan_doctor)
            with self._lock:
                self.view.zones = zones or self.view.zones
                self.view.doctor = doctor or self.view.doctor
            self._publish()
            self._stop.wait(self.slow_interval)

    # the tracer -----------------------------------------------------------------------------
    def _start_tracer(self) -> None:
        try:
            from rdmapin.trace.summary import Summary
            from rdmapin.trace.tracer import Tracer

            self._summary = Summary()
            tracer = Tracer(keep_events=0, on_event=self._feed)
            tracer.start()
        except Exception as e:  # no bcc, no tracefs, not root, a refused program: gauges serve
            self.tracer_error = f"{type(e).__name__}: {e}"
            self._say(f"tracer down: {self.tracer_error}")
            return
        self.tracer = tracer
        if tracer.unavailable:
            self._say(f"tracer: {tracer.unavailable}")
        self._say("tracer attached")
        if self._stop.is_set():
            return
        self._publish()

    def _feed(self, ev: Any) -> None:
        with self._summary_lock:
            self._summary.feed(ev)

    def tracer_up(self) -> bool:
        t = self.tracer
        return bool(t is not None and t.program is not None and t._thread is not None
                    and t._thread.is_alive())

    def _trace_state(self) -> None:
        """Copy the tracer's counters and summaries into the view (under self._lock)."""
        v = self.view
        v.tracer_up = self.tracer_up()
        if self.tracer is None or self._summary is None:
            return
        v.trace_totals = self.tracer.totals()
        with self._summary_lock:
            d = self._summary.to_dict()
        v.trace_migrate = {(reason, result): n for reason, r in d["migrate_by_reason"].items()
                           for result, n in r.items()}
        v.trace_owners = d["failures_by_owner"]
        v.trace_isolation = d["isolation_busy_by_owner"]

    # publishing -----------------------------------------------------------------------------
    def _publish(self) -> None:
        with self._lock:
            self._trace_state()
            body = families.render(self.view)
            self._body = body
        if self.textfile_dir is not None:
            try:
                textfile.write(self.textfile_dir, body)
            except OSError as e:
                with self._lock:
                    self.view.textfile_errors = (self.view.textfile_errors or 0) + 1
                self._say(f"cannot write {self.textfile_dir / textfile.NAME}: {e}")

    def _say(self, line: str) -> None:
        """Say a line once (a scan repeating the same complaint every second says it once)."""
        if line not in self._said:
            self._said.add(line)
            self.note(line)


def wait_until(pred: Any, timeout: float, step: float = 0.05) -> bool:
    """Poll ``pred()`` until true or ``timeout`` s passed (for callers and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
