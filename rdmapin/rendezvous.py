"""A TCP rendezvous: two hosts swap what their RC QPs need to connect (QP number, GID, PSN)
and the MRs each lets the other reach (address, rkey, length).

RDMA has no addressing of its own before a QP is connected: the numbers travel out of band,
usually over a TCP connection like this one (perftest and rping do the same). One side
serves, the other connects; both then call the same ``exchange`` with the same tag, in the
same order, each getting the other's value. Messages are JSON lines, one per exchange, so a
peer can be any language.

    # host a (198.51.100.1)                        # host b
    with rendezvous.serve("198.51.100.1") as ch:    with rendezvous.connect("198.51.100.1") as ch:
        peer = ch.endpoint(Endpoint(qp.qp_num,          peer = ch.endpoint(Endpoint(...))
                           gid, mrs={"dst": RemoteMR.of(mr)}))

A tag that does not match (the peer moved on, e.g. after a failure) raises RendezvousError
"out of step" at once and keeps the peer's message for when this side asks for that tag; a
peer that hangs up or never answers raises it too, naming the tag waited for.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from rdmapin.errors import RendezvousError

PORT = 18515  # perftest's and rping's default port
_GID = re.compile(r"[0-9a-f]{4}(:[0-9a-f]{4}){7}")
_RETRY = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT)


@dataclass(frozen=True)
class RemoteMR:
    """What a peer needs to RDMA READ/WRITE an MR: its address, rkey and length."""

    addr: int
    rkey: int
    length: int

    @classmethod
    def of(cls, mr: Any) -> RemoteMR:
        """From an rdmapin MemoryRegion (or anything with addr, rkey and length)."""
        return cls(int(mr.addr), int(mr.rkey), int(mr.length))


@dataclass(frozen=True)
class Endpoint:
    """One side of an RC connection: its QP number, port GID and first PSN, and the MRs
    (by name) the peer may access."""

    qp_num: int
    gid: str  # "0000:0000:0000:0000:0000:ffff:c633:6401", pyverbs' GID text
    psn: int = 0
    mrs: dict[str, RemoteMR] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"qp_num": self.qp_num, "gid": self.gid, "psn": self.psn,
                "mrs": {k: [m.addr, m.rkey, m.length] for k, m in self.mrs.items()}}

    @classmethod
    def from_json(cls, d: Any) -> Endpoint:
        """Checked: a malformed endpoint is a RendezvousError naming the field."""
        try:
            ep = cls(int(d["qp_num"]), str(d["gid"]), int(d.get("psn", 0)),
                     {str(k): RemoteMR(*(int(x) for x in v)) for k, v in d["mrs"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RendezvousError(f"malformed endpoint from the peer: {d!r} ({e!r})",
                                  hint="both sides must run the same rdmapin") from None
        if not 0 < ep.qp_num < 1 << 24 or not 0 <= ep.psn < 1 << 24:
            raise RendezvousError(f"endpoint from the peer: qp_num {ep.qp_num:#x} / psn "
                                  f"{ep.psn:#x} outside 24 bits")
        if not _GID.fullmatch(ep.gid):
            raise RendezvousError(f"endpoint from the peer: GID {ep.gid!r} is not 8 groups "
                                  "of 4 hex digits")
        return ep


class Channel:
    """One connected peer; ``exchange`` sends this side's value and returns the peer's."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self._buf = b""
        self._stash: dict[str, Any] = {}  # messages that arrived before they were asked for

    def send(self, tag: str, body: Any) -> None:
        line = json.dumps({"tag": tag, "body": body}, separators=(",", ":")) + "\n"
        try:
            self.sock.sendall(line.encode())
        except OSError as e:
            raise RendezvousError(f"sending {tag!r} to {self.peer}: {e}",
                                  hint="the peer process or its host went away") from None

    def recv(self, tag: str, timeout: float = 60.0) -> Any:
        """The peer's value for ``tag``; RendezvousError when it sends another tag first,
        hangs up, or says nothing for ``timeout`` seconds."""
        if tag in self._stash:
            return self._stash.pop(tag)
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RendezvousError(f"no {tag!r} from {self.peer} within {timeout:g} s",
                                      hint="the peer is slow, stuck or out of step; raise "
                                           "the timeout for slow steps")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise RendezvousError(f"waiting for {tag!r} from {self.peer}: {e}") from None
            if not chunk:
                raise RendezvousError(f"{self.peer} closed the connection while this side "
                                      f"waited for {tag!r}",
                                      hint="the peer process ended (failed or killed)")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
            got, body = msg["tag"], msg["body"]
        except (ValueError, KeyError, TypeError):
            raise RendezvousError(f"{self.peer} sent something that is not a rendezvous "
                                  f"message: {line[:80]!r}") from None
        if got != tag:
            self._stash[got] = body
            raise RendezvousError(f"out of step with {self.peer}: this side waits for "
                                  f"{tag!r}, the peer sent {got!r} ({body!r:.200})",
                                  hint="the two sides ran different steps (one failed or "
                                       "skipped one)")
        return body

    def drop_stale(self) -> dict[str, Any]:
        """Forget (and return) what the peer sent for steps this side will not take."""
        stale, self._stash = self._stash, {}
        return stale

    def exchange(self, tag: str, body: Any = None, timeout: float = 60.0) -> Any:
        self.send(tag, body)
        return self.recv(tag, timeout)

    def endpoint(self, local: Endpoint, tag: str = "endpoint",
                 timeout: float = 60.0) -> Endpoint:
        """Swap endpoints; the peer's is checked (Endpoint.from_json)."""
        return Endpoint.from_json(self.exchange(tag, local.to_json(), timeout))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(host: str, port: int = PORT, timeout: float = 60.0) -> Channel:
    """Listen on host:port and return the first peer that connects within ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            ls.bind((host, port))
        except OSError as e:
            raise RendezvousError(f"cannot listen on {host}:{port}: {e}",
                                  hint="another rendezvous holds the port, or the address "
                                       "is not this host's") from None
        ls.listen(1)
        ls.settimeout(timeout)
        try:
            sock, addr = ls.accept()
        except TimeoutError:
            raise RendezvousError(f"no peer connected to {host}:{port} within {timeout:g} s",
                                  hint="is the peer running, and can it reach this address?"
                                  ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Channel(sock, f"{addr[0]}:{addr[1]}")


def connect(host: str, port: int = PORT, timeout: float = 60.0) -> Channel:
    """Connect to a serving peer, retrying until it listens or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(
                (host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        except OSError as e:
            if e.errno not in _RETRY and not isinstance(e, TimeoutError):
                raise RendezvousError(f"connecting to {host}:{port}: {e}") from None
            last = e
            time.sleep(0.2)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Channel(sock, f"{host}:{port}")
    raise RendezvousError(f"no peer listening on {host}:{port} within {timeout:g} s "
                          f"(last: {last})",
                          hint="start the serving side, check the link and the address")
