"""Real components for the exporter's tests: `rdmapin exporter` as a process of its own, and a
real Prometheus server (Debian's `prometheus` package, ci/install-deps) scraping it every
second, queried through its HTTP API (/api/v1/query)."""

from __future__ import annotations

import ctypes
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
RULES = TOP / "contrib" / "prometheus" / "rdmapin.rules.yml"
DASHBOARD = TOP / "contrib" / "grafana" / "rdmapin.json"


def prefer_node0() -> None:
    """A preexec_fn: the child's memory (and what the kernel allocates for it) on node 0 while
    node 0 has room (set_mempolicy MPOL_PREFERRED), so a test can keep node 1's hot-plugged
    DIMM for the memory it offlines."""
    libc = ctypes.CDLL(None, use_errno=True)
    mask = ctypes.c_ulong(1)
    if libc.syscall(238, 1, ctypes.byref(mask), ctypes.c_ulong(64)) != 0:  # SYS_set_mempolicy
        raise OSError(ctypes.get_errno(), "set_mempolicy(MPOL_PREFERRED, node 0)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class Exporter:
    """`python -m rdmapin exporter ARGS` (``--listen 127.0.0.1:0`` unless given), its stderr
    collected on a thread; ``url`` once it serves."""

    def __init__(self, *args: str, user: list[str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        # faulthandler: a crash in a C library (bcc's compile) leaves its stack on stderr
        argv = [sys.executable, "-X", "faulthandler", "-m", "rdmapin", "exporter", *args]
        if "--listen" not in args and "--textfile" not in args:
            argv += ["--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen([*(user or []), *argv], cwd=TOP, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url: str | None = None

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first stderr line holding ``text``; fails with all of stderr if it exits or
        the time runs out first."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if "" in self.lines or time.monotonic() > end:
                    break
                self._cond.wait(1)
        # stderr closes before the process is reaped: a crash's signal shows after a wait
        try:
            status = self.proc.wait(10 if "" in self.lines else 0.1)
        except subprocess.TimeoutExpired:
            status = None
        why = f"killed by signal {-status}" if status is not None and status < 0 \
            else f"exit {status}"
        raise AssertionError(f"exporter never said {text!r} ({why}; the guest's console has "
                             f"the OOM killer's word if it was that):\n{self.stderr}")

    def serving(self, timeout: float = 300) -> str:
        line = self.wait_for("serving http://", timeout)
        self.url = line.split("serving ", 1)[1].strip()
        return self.url

    @property
    def port(self) -> int:
        assert self.url is not None
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def scrape(self) -> str:
        assert self.url is not None
        return get(self.url).decode("utf-8")

    def stop(self, timeout: float = 300) -> int:
        """SIGTERM, and the exit status (killed and failed if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"exporter ignored SIGTERM:\n{self.stderr}") from None
        self._reader.join(timeout=10)
        return self.proc.returncode


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] of an exposition, by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, [])
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def promtool_check_metrics(text: str) -> None:
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping ``targets`` every second, with rdmapin's
    alerting rules loaded; its TSDB in ``workdir``."""

    def __init__(self, workdir: Path, targets: list[str], interval: str = "1s",
                 preexec: Callable[[], None] | None = None) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "rdmapin",
                                "static_configs": [{"targets": targets}]}],
        }))
        self.log = open(workdir / "prometheus.log", "w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=preexec)
        self.base = f"http://127.0.0.1:{self.port}"
        end = time.monotonic() + 300
        while True:
            try:
                if get(f"{self.base}/-/ready", timeout=5):
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"prometheus did not get ready:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        body = json.loads(get(url))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of each series of an instant query."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str) -> float:
        rows = self.query(expr)
        assert len(rows) == 1, (expr, rows)
        return rows[0][1]

    def wait(self, expr: str, timeout: float = 120) -> list[tuple[dict[str, str], float]]:
        """Poll until ``expr`` returns a series (a condition: ``x > 3``)."""
        end = time.monotonic() + timeout
        while True:
            rows = self.query(expr)
            if rows:
                return rows
            if time.monotonic() > end:
                raise AssertionError(f"no series for {expr!r} in {timeout} s")
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def typed_names(text: str) -> dict[str, str]:
    """name -> type of every family an exposition declares (its '# TYPE' lines: a counter's
    name ends in _total there)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out
