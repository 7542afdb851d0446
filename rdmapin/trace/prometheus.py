"""The tracer's counters for a fleet's Prometheus, served on loopback by default.

Counters are read from the tracer at scrape time (no second bookkeeping): the vmstat-named
totals, lost events, and folios that failed to migrate by owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from rdmapin.errors import UnsupportedError


def serve(host: str, port: int, totals: Callable[[], dict[str, int]],
          by_owner: Callable[[], list[dict[str, Any]]]) -> Any:
    """Start an HTTP exporter thread; returns the server (call .shutdown() to stop)."""
    try:
        from prometheus_client.core import REGISTRY, CounterMetricFamily
        from prometheus_client.exposition import start_http_server
    except ImportError as e:
        raise UnsupportedError("--prometheus needs the prometheus_client package",
                               hint="pip install 'rdmapin[tools]'") from e

    class Collector:
        def collect(self) -> Iterator[Any]:
            t = totals()
            for name, value in sorted(t.items()):
                yield CounterMetricFamily(f"rdmapin_trace_{name}",
                                          f"{name} seen by the tracer since it started",
                                          value=value)
            fam = CounterMetricFamily("rdmapin_trace_owner_folio_failures",
                                      "folios that failed to migrate, once per migration "
                                      "call, by pinning owner",
                                      labels=["pid", "comm", "lkey"])
            for row in by_owner():
                fam.add_metric([str(row["pid"]), str(row["comm"]),
                                "" if row["lkey"] is None else hex(row["lkey"])],
                               row["failures"])
            yield fam

    collector = Collector()
    REGISTRY.register(collector)
    result = start_http_server(port, addr=host)
    server = result[0] if isinstance(result, tuple) else result
    server._rdmapin_collector = collector  # unregistered by stop()
    return server


def stop(server: Any) -> None:
    from prometheus_client.core import REGISTRY

    server.shutdown()
    REGISTRY.unregister(server._rdmapin_collector)
