"""Hostile arguments for every command, generated from each command's own parser: the parser
answers with exit 0 or 2 (usage) and never a traceback; the cheap commands, run for real,
exit 0, 1 or 2 with -j printing only JSON lines. Found examples are kept as plain tests."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rdmapin import cli

PARSER = cli.build_parser()
# The run-level suites run the real commands: under TCG a doctor run or a whole-memory fragmap
# scan takes tens of seconds, so the guests run a few examples each (derandomized: the first
# of the host's), the host many.
IN_VM = os.environ.get("RDMAPIN_IN_VM") == "1"


def examples(host: int, guest: int) -> int:
    return guest if IN_VM else host

SUB = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))
COMMANDS = sorted(SUB.choices)

# Values that break naive parsers: numbers of every size and sign, sizes, hex, pids, paths,
# host:port, unicode and control characters.
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e309", "0x", "0x0", "0xffffffffffffffff",
                     "4K", "2M", "1G", "1T", "-4K", "99999999999999999999999", "", " ", "--",
                     "127.0.0.1:0", "127.0.0.1:65536", ":9464", "[::1]:9464", "host:port",
                     "/", "/nonexistent/x.png", "/proc/self/mem", "results/x.png", "\x00",
                     "\u202e", "a\nb", "\x1b[2J", "é", "1" * 300]),
    st.text(max_size=20),
)


def _options(command: str) -> list[argparse.Action]:
    return [a for a in SUB.choices[command]._actions if a.option_strings]


@st.composite
def argv(draw: st.DrawFn, command: str) -> list[str]:
    out = [command]
    for action in draw(st.lists(st.sampled_from(_options(command)), max_size=4)):
        if action.option_strings == ["-h"] or "--help" in action.option_strings:
            continue
        out.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0:
            out.append(draw(VALUES))
    positional = [a for a in SUB.choices[command]._actions if not a.option_strings]
    if positional:
        out += draw(st.lists(VALUES, max_size=2))
    return out


def _parse(args: list[str]) -> int:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            PARSER.parse_args(args)
        except SystemExit as e:
            return int(e.code or 0)
    assert "Traceback" not in err.getvalue()
    return 0


@pytest.mark.pure
@pytest.mark.parametrize("command", COMMANDS)
@settings(max_examples=150)
@given(data=st.data())
def test_every_commands_parser_answers_0_or_2(command, data):
    assert _parse(data.draw(argv(command))) in (0, 2)


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(args)
        except SystemExit as e:
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


def _assert_answered(rc: int, out: str, err: str, js: bool, json_rcs: tuple[int, ...] = (0,)
                     ) -> None:
    """Exit 0, 1 or 2, no traceback, and with -j nothing but JSON lines on stdout."""
    assert rc in (0, 1, 2), err
    assert "Traceback" not in err
    if js and rc in json_rcs:
        for line in out.splitlines():
            json.loads(line)


PID_VALUES = st.one_of(st.integers(min_value=-5, max_value=2**31).map(str),
                       st.just(str(os.getpid())), VALUES)
ADDR_VALUES = st.one_of(st.integers(min_value=0, max_value=2**64 + 5).map(hex), VALUES)
LEN_VALUES = st.one_of(st.integers(min_value=-1, max_value=2**64 + 5).map(str),
                       st.sampled_from(["4K", "2M", "1G", "128T", "0"]), VALUES)


@settings(max_examples=examples(60, 12))
@given(pid=PID_VALUES, addr=ADDR_VALUES, length=LEN_VALUES, js=st.booleans())
@example(pid=str(os.getpid()), addr="0x0", length="99999999999999999", js=False)
@example(pid=str(os.getpid()), addr=hex(2**64 - 4096), length="8192", js=True)
def test_pages_exits_0_1_or_2_and_json_is_json(pid, addr, length, js):
    args = ["pages", "--pid", pid, "--addr", addr, "--len", length] + (["-j"] if js else [])
    _assert_answered(*_run(args), js)


@settings(max_examples=examples(25, 4))
@given(pids=st.lists(PID_VALUES, max_size=3), js=st.booleans())
def test_inspect_exits_0_1_or_2_and_json_is_json(pids, js):
    _assert_answered(*_run(["inspect", *(["-j"] if js else []), "--", *pids]), js)


@settings(max_examples=examples(8, 2))
@given(check=st.lists(st.sampled_from(["rdma", "memlock", "maps", "thp", "zones", "tracing",
                                       "bogus", ""]), max_size=3), js=st.booleans())
def test_doctor_exits_0_1_or_2_and_json_is_json(check, js):
    args = ["doctor", *(["-j"] if js else [])]
    for c in check:
        args += ["-c", c]
    _assert_answered(*_run(args), js, (0, 1))


@pytest.mark.skipif(os.geteuid() != 0, reason="the physical map needs root")
@settings(max_examples=examples(4, 1))
@given(pid=PID_VALUES, png=st.sampled_from(["/nonexistent/x.png", "/", "", None]))
def test_fragmap_exits_0_1_or_2_and_json_is_json(pid, png):
    args = ["fragmap", "-j", "-p", pid] + (["--png", png] if png is not None else [])
    _assert_answered(*_run(args), True)


@pytest.mark.parametrize("args", [
    ["trace", "-d", "0"], ["trace", "-s", "-1", "-d", "1"], ["trace", "--prometheus", "x"],
    ["trace", "-p", "0", "-d", "1"], ["bench", "--iters", "-1"], ["bench", "--sizes", "x"],
    ["bench", "--pages", "9k", "--rounds", "1", "--iters", "1"],
])
def test_trace_and_bench_bad_examples_are_errors_not_tracebacks(args):
    rc, _out, err = _run(args)
    assert rc in (1, 2), err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("rdmapin")


@pytest.mark.skipif(os.geteuid() != 0, reason="PFNs and page flags need root")
@settings(max_examples=examples(80, 20))
@given(addr=st.integers(min_value=0, max_value=2**64 - 1),
       length=st.integers(min_value=-1, max_value=2**64))
@example(addr=0, length=2**64)
@example(addr=2**47 - 4096, length=2**17)
def test_page_report_of_any_range_is_a_report_or_an_error(addr, length):
    """Any (addr, length) in the 64-bit space: a report or an RdmapinError, bounded in memory
    (ranges past 64 GiB of address space are refused before a read)."""
    from rdmapin import pages
    from rdmapin.errors import RdmapinError

    try:
        r = pages.inspect(addr, length)
    except RdmapinError:
        return
    assert r.base_pages == r.present + r.not_present
