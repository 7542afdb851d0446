"""Output no other process can forge (issue 12). A process's comm and the paths in its
/proc/PID/maps are chosen by whoever runs it, and rdmapin prints them as root. Real processes
holding a real long-term pin (an io_uring fixed buffer over a memfd: tests/uring.py) rename
themselves and their memfd to names that break naive renderers and parsers: a Prometheus
label break, a /proc/PID/stat lookalike, a terminal escape, a bidi override, a byte that is
not UTF-8, the text of an escape, and line breaks other than a newline. Every output about
them shows the name escaped (rdmapin.kernel.printable), keeps its number of lines, and
parses: text, JSON, the Prometheus exposition (prometheus_client's parser, and promtool
where installed) and the trace's columns (the host's tracepoint-only tracer, run in a
private mount namespace)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import forged
import pytest
from forged import NAMES, Child, check_json, check_name, check_text

from rdmapin.kernel import pagemap, procfs
from rdmapin.kernel.printable import escape, escape_all, unescape

# Renamed processes checked through dozens of CLI runs: the same bytes on every kernel, and
# minutes under TCG, so the host runs it (the guests run the tracer's own name tests).
pytestmark = pytest.mark.host_only

TOP = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def children():
    with forged.children() as kids:
        yield kids


def rdmapin(*argv: str) -> str:
    """stdout of `rdmapin ARGV`, which must exit 0 and be UTF-8."""
    proc = subprocess.run([sys.executable, "-m", "rdmapin", *argv], capture_output=True,
                          cwd=TOP, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="backslashreplace")
    return proc.stdout.decode("utf-8")  # strict: output that is not UTF-8 fails here


# The escaper itself.

@pytest.mark.pure
def test_every_byte_comes_back_and_no_two_names_print_alike():
    raws = [bytes([b]) for b in range(256)] + [bytes(range(256)), *NAMES.values(),
                                                "\u2028\u00a0\u200f\ufeff".encode(),
                                                "\U000e0001é".encode(), b"\xed\xa0\x80"]
    shown = {}
    for raw in raws:
        text = escape(raw.decode("utf-8", "surrogateescape"))
        assert text.isprintable() and unescape(text) == raw, (raw, text)
        assert shown.setdefault(text, raw) == raw, f"{raw!r} prints as {shown[text]!r} does"


@pytest.mark.pure
def test_the_escapes_are_the_documented_ones():
    assert escape('a"} 1\n#x') == 'a"} 1\\x0a#x'
    assert escape("x) S 1 (y") == "x) S 1 (y"
    assert escape("\x1b[2J") == "\\x1b[2J"
    assert escape("a\u202eb\u2066\u2069\u200f") == "a\\u202eb\\u2066\\u2069\\u200f"
    assert escape("ab\udcff") == "ab\\xff"  # surrogateescape's byte 0xff
    assert escape("\x7f\x85\u2028") == "\\x7f\\u0085\\u2028"
    assert escape("\\x1b") == "\\\\x1b"
    assert escape("é ünïcode") == "é ünïcode"


@pytest.mark.pure
def test_json_of_a_name_that_is_not_utf8_is_valid_and_round_trips():
    obj = {"comm": "ab\udcff", "owners": [{"label": "mr a\u202eb[1]"}], "pid": 1}
    line = json.dumps(escape_all(obj), sort_keys=True)
    assert check_json(line) == {"comm": "ab\\xff", "owners": [{"label": "mr a\\u202eb[1]"}],
                                "pid": 1}
    line.encode("utf-8")  # json.dumps(obj) itself would carry a lone surrogate


@pytest.mark.pure
def test_a_name_with_line_breaks_other_than_a_newline_stays_on_its_line():
    """The kernel's files end lines at \n only; a comm or a path may hold \r, \f, \x85 or
    U+2028 (str.splitlines' other line ends) and must not start a line of its own."""
    from rdmapin.kernel import maps

    name = NAMES["linebreaks"].decode()
    st = procfs.parse_status(f"Name:\t{name}\nVmPin:\t    4 kB\n")
    assert st == {"Name": name.strip(), "VmPin": 4096}
    (v,) = maps.parse(f"7f00-7f10 rw-s 00000000 00:01 7   /memfd:{name} (deleted)\n"
                      "Rss:                   4 kB\n")
    assert v.path == f"/memfd:{name} (deleted)" and v.fields == {"Rss": 4096}


# The commands, on the real processes.

@pytest.mark.parametrize("key", NAMES)
def test_inspect(children, key):
    kid, plain = children[key], children["plain"]
    lines = check_text(rdmapin("inspect", str(kid.pid)))
    assert len(lines) == len(check_text(rdmapin("inspect", str(plain.pid)))) == 2
    comm = escape(kid.name[:10])  # the COMM column holds the first 10 characters
    assert re.fullmatch(rf" *{kid.pid} {re.escape(comm)} +64K .*", lines[1]), lines[1]
    out = rdmapin("inspect", str(kid.pid), "-j")
    (line,) = check_text(out)
    row = check_json(line)
    check_name(row["comm"], kid)
    assert row["pid"] == kid.pid and row["vm_pin"] == kid.length and row["mrs"] == 0


def test_inspect_lists_every_renamed_process(children):
    """No name hides its process from `rdmapin inspect` (every process with VmPin > 0)."""
    rows = {r["pid"]: r for r in map(check_json, check_text(rdmapin("inspect", "-j")))}
    for kid in children.values():
        check_name(rows[kid.pid]["comm"], kid)


@pytest.mark.parametrize("key", NAMES)
def test_pages(children, key):
    kid, plain = children[key], children["plain"]

    def args(c: Child) -> list[str]:
        return ["pages", "--pid", str(c.pid), "--addr", hex(c.addr), "--len", str(c.length)]

    lines = check_text(rdmapin(*args(kid)))
    assert len(lines) == len(check_text(rdmapin(*args(plain))))
    assert lines[0].endswith(f"pid {kid.pid} ({escape(kid.name)})"), lines[0]
    path = escape(kid.path.decode("utf-8", "surrogateescape"))
    (vma,) = [x for x in lines if x.startswith("vma ")]
    assert vma.endswith(f" rw-s {path}"), vma
    (line,) = check_text(rdmapin(*args(kid), "-j"))
    report = check_json(line)
    check_name(report["comm"], kid)
    (v,) = report["vmas"]
    assert v["path"] == path and unescape(v["path"]) == kid.path


@pytest.mark.host_kernel  # two bcc compiles: minutes under TCG; the columns are the same there
def test_trace_columns_and_json(children):
    """Two tracers at once, one printing columns and one JSON, see the same events: the
    compactions each renamed process runs. Each event is one row whose COMM column is the
    escaped name, and one JSON line carrying it."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare for a private tracefs mount")
    mount = "mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing; "
    ns = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
          mount + 'exec "$@"', "sh", sys.executable]
    probe = subprocess.run([*ns, "-c", "import sys; sys.path.insert(0, 'tests'); "
                            "from needs import host_tracing_missing as m; print(m() or '')"],
                           capture_output=True, text=True, cwd=TOP, timeout=120, check=True)
    if probe.stdout.strip():
        if os.environ.get("RDMAPIN_HOST_TRACING") == "1":
            pytest.fail(probe.stdout.strip(), pytrace=False)
        pytest.skip(probe.stdout.strip())
    tracers = [subprocess.Popen([*ns, "-m", "rdmapin", "trace", "-d", "300", *mode],
                                cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for mode in ([], ["-j"])]  # sh and unshare exec: the pid is the tracer's
    try:
        for t in tracers:  # both attached before anyone compacts
            err = b""
            while b"Hit Ctrl-C to end." not in err:
                line = t.stderr.readline()
                assert line, err.decode(errors="backslashreplace")
                err += line
        for kid in children.values():
            kid.compact()
        time.sleep(1)  # then Ctrl-C: each tracer drains its buffer and prints its summary
        for t in tracers:
            t.send_signal(signal.SIGINT)
        (text, err_t), (js, err_j) = (t.communicate(timeout=120) for t in tracers)
    finally:
        for t in tracers:
            if t.poll() is None:
                t.kill()
    assert [t.returncode for t in tracers] == [0, 0], (err_t, err_j)
    lines = check_text(text.decode("utf-8"))
    events = [check_json(x) for x in check_text(js.decode("utf-8"))]
    assert events[-1]["summary"] == "summary" and events[-1]["totals"]["lost_events"] == 0
    for kid in children.values():
        mine = [e for e in events if e.get("pid") == kid.pid]
        assert mine, f"no event of pid {kid.pid}"
        # A row: TIME (9 wide) COMM (15 wide, never cut) PID EVENT ...
        row = re.compile(rf"[\d. ]{{9}} (.*?) +{kid.pid} [a-z_]+ ")
        rows = [m.group(1) for m in map(row.match, lines) if m]
        assert len(rows) == len(mine)  # one line per event: no name broke a row
        assert all(e["comm"] == rows[0] for e in mine) and set(rows) == {rows[0]}
        check_name(rows[0], kid)


def test_trace_summary_and_prometheus(children):
    """Owners named by the renamed processes (comm read from /proc as the tracer's inventory
    does; the folio failures are made here: on this host no MR pins and no kprobe sees one)
    in the summary's text and JSON and in the exposition `rdmapin trace --prometheus`
    serves: one series per pid, comm and lkey, the comm label escaped, parsed by
    prometheus_client and by promtool where it is installed."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from rdmapin.trace import prometheus
    from rdmapin.trace.attribution import Owner
    from rdmapin.trace.events import Event, Kind
    from rdmapin.trace.summary import Summary, render

    def summary(names: dict[int, str]) -> Summary:
        s = Summary()
        for i, kid in enumerate(children.values()):
            pfns = pagemap.pfns(pagemap.read(kid.pid, kid.addr, kid.length)).tolist()
            half = kid.length // 2  # two pinned ranges of one process: one series
            for n, (addr, length) in enumerate([(kid.addr, half), (kid.addr + half, half)]):
                o = Owner(pid=kid.pid, comm=names[kid.pid], addr=addr, length=length,
                          source="inventory")
                for pfn in pfns[:i + 1 + n]:
                    s.feed(Event(ts=0.0, kind=Kind.FOLIO_FAIL, pid=kid.pid, tid=kid.pid,
                                 comm=names[kid.pid], reason="", pfn=pfn, owners=[o]))
        return s

    s = summary({k.pid: procfs.comm(k.pid) for k in children.values()})
    plain = summary({k.pid: "plain" for k in children.values()})
    totals = {"pgmigrate_fail": 1, "lost_events": 0}
    lines = check_text(render(s, totals, {}) + "\n")
    assert len(lines) == len(check_text(render(plain, totals, {}) + "\n"))
    d = check_json(json.dumps(escape_all(s.to_dict(totals, {})), sort_keys=True))
    for kid in children.values():
        rows = [r for r in d["failures_by_owner"] if r["pid"] == kid.pid]
        assert len(rows) == 2
        for r in rows:
            check_name(r["comm"], kid)
            assert f" {r['owner']}" in "\n".join(lines)  # the text shows the same label
            assert r["owner"].startswith(f"mr {escape(kid.name)}[{kid.pid}] ")

    server = prometheus.serve("127.0.0.1", 0, lambda: totals, s.failures_by_owner)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics",
                                    timeout=10) as r:
            body = r.read().decode("utf-8")
    finally:
        prometheus.stop(server)
    check_text(body)
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    samples = fams["rdmapin_trace_owner_folio_failures"].samples
    series = [tuple(sorted(x.labels.items())) for x in samples]
    assert len(series) == len(set(series)) == len(children)
    by_pid = {int(x.labels["pid"]): x for x in samples}
    for i, kid in enumerate(children.values()):
        check_name(by_pid[kid.pid].labels["comm"], kid)
        assert by_pid[kid.pid].value == (i + 1) + (i + 2)  # the two ranges add up
        assert by_pid[kid.pid].labels["lkey"] == ""
    assert fams["rdmapin_trace_pgmigrate_fail"].samples[0].value == 1
    promtool = shutil.which("promtool")  # Debian's prometheus package; not required yet
    if promtool is None:
        return
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
