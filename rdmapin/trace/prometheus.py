"""The tracer's counters for a fleet's Prometheus, served on loopback by default.

Counters are read from the tracer at scrape time (no second bookkeeping): the vmstat-named
totals, lost events, and folios that failed to migrate by owner. An owner's ``comm`` label
is its name escaped (rdmapin.kernel.printable), as text and JSON print it: prometheus_client
cannot encode a name that is not UTF-8, and a name is chosen by whoever runs the process.
One series per pid, comm and lkey: an owner's ranges of one key add up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from rdmapin.errors import UnsupportedError
from rdmapin.kernel.printable import escape


class Collector:
    """What a scrape returns, read from ``totals`` and ``by_owner`` (Summary's
    failures_by_owner) when it is asked."""

    def __init__(self, totals: Callable[[], dict[str, int]],
                 by_owner: Callable[[], list[dict[str, Any]]]) -> None:
        self.totals, self.by_owner = totals, by_owner

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        for name, value in sorted(self.totals().items()):
            yield CounterMetricFamily(f"rdmapin_trace_{name}",
                                      f"{name} seen by the tracer since it started",
                                      value=value)
        fam = CounterMetricFamily("rdmapin_trace_owner_folio_failures",
                                  "folios that failed to migrate, once per migration "
                                  "call, by pinning owner",
                                  labels=["pid", "comm", "lkey"])
        series: dict[tuple[str, str, str], int] = {}
        for row in self.by_owner():
            key = (str(row["pid"]), escape(str(row["comm"])),
                   "" if row["lkey"] is None else hex(row["lkey"]))
            series[key] = series.get(key, 0) + row["failures"]
        for labels, failures in series.items():
            fam.add_metric(list(labels), failures)
        yield fam


def serve(host: str, port: int, totals: Callable[[], dict[str, int]],
          by_owner: Callable[[], list[dict[str, Any]]]) -> Any:
    """Start an HTTP exporter thread; returns the server (call .shutdown() to stop)."""
    try:
        from prometheus_client.core import REGISTRY
        from prometheus_client.exposition import start_http_server
    except ImportError as e:
        raise UnsupportedError("--prometheus needs the prometheus_client package",
                               hint="pip install 'rdmapin[tools]'") from e

    collector = Collector(totals, by_owner)
    REGISTRY.register(collector)
    result = start_http_server(port, addr=host)
    server = result[0] if isinstance(result, tuple) else result
    server._rdmapin_collector = collector  # unregistered by stop()
    return server


def stop(server: Any) -> None:
    from prometheus_client.core import REGISTRY

    server.shutdown()
    REGISTRY.unregister(server._rdmapin_collector)
