"""The exposition over HTTP: ``GET /metrics`` returns the bytes the last scan published.

The standard library's threading HTTP server (one thread per connection, daemon threads, a
read timeout so a stalled client holds nothing) serving a callable's bytes: a scrape costs a
copy, never a scan or a render, whatever else is scraping. prometheus_client's own server
renders its registry on every request, which is what this avoids.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rdmapin.errors import RdmapinOSError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INDEX = b"rdmapin exporter: the metrics are at /metrics\n"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = 10  # seconds a client may take to send its request
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.body(), CONTENT_TYPE)
        elif path == "/":
            self._send(200, INDEX, "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: the metrics are at /metrics\n",
                       "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self._send(200 if self.path.split("?", 1)[0] in ("/", "/metrics") else 404, b"",
                   CONTENT_TYPE)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, port: int, body: Callable[[], bytes]) -> None:
        self.body = body
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise _bind_error(host, port, e) from e
        self._thread: threading.Thread | None = None

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up mid-response (Prometheus past its scrape_timeout) is its
        own business: a debug line, not socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("%s went away: %s", client_address, exc)
            return
        log.warning("answering %s: %s: %s", client_address, type(exc).__name__, exc)
        log.debug("answering %s", client_address, exc_info=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/metrics"

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="rdmapin-exporter-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()


def _bind_error(host: str, port: int, e: OSError) -> RdmapinOSError:
    where = f"{host}:{port}"
    if isinstance(e, socket.gaierror):  # a name that does not resolve: no errno of its own
        return RdmapinOSError(errno.EADDRNOTAVAIL, f"cannot listen on {where}: {e.strerror}",
                              hint="give an address (127.0.0.1, ::1, 198.51.100.1) or a name "
                                   "this host resolves")
    hints = {
        errno.EADDRINUSE: f"something listens on {where} already (another exporter, or "
                          "rdmapin trace --prometheus): stop it or pick another port with "
                          "--listen HOST:PORT",
        errno.EADDRNOTAVAIL: f"no interface of this host has the address {host}: see "
                             "`ip addr`, or listen on 127.0.0.1",
        errno.EACCES: f"port {port} is privileged (below 1024): use a port above 1023 or "
                      "run as root",
    }
    return RdmapinOSError(e.errno or 0, f"cannot listen on {where}",
                          hint=hints.get(e.errno or 0, "check --listen HOST:PORT"))
