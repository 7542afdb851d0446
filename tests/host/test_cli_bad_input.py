"""Bad arguments are refused at parse time (exit 2, what was expected) before any costly work,
and a page report over a range far larger than what is mapped is an error with a hint, not
an allocation that follows the requested length."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdmapin", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.pure
@pytest.mark.parametrize(("args", "says"), [
    (("trace", "-d", "-1"), "must be > 0"),
    (("trace", "-d", "nan"), "must be > 0"),
    (("trace", "-s", "0"), "must be > 0"),
    (("trace", "--prometheus", "127.0.0.1:99999"), "port 99999 is not in 1-65535"),
    (("trace", "--prometheus", "127.0.0.1:0"), "port 0 is not in 1-65535"),
    (("trace", "-p", "-5"), "must be > 0"),
    (("fragmap", "--png", "/nonexistent/dir/x.png"), "'/nonexistent/dir' does not exist"),
    (("fragmap", "--png", "/"), "not a directory"),
    (("bench", "--rounds", "0"), "must be > 0"),
    (("bench", "--plot", "/nonexistent/p.png"), "does not exist"),
])
def test_bad_arguments_are_usage_errors_before_any_work(args, says):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="PFNs and page flags need root")
def test_page_report_over_a_huge_range_reads_only_what_is_mapped():
    """The measured traceback: --addr 0x0 --len 99999999999999999 allocated 178 TiB. Now the
    report reads the mapped pages only and says how much of the range they are."""
    # The CLI runs in a fresh interpreter that reports its own VmHWM (ru_maxrss would carry
    # this test process's peak across fork and exec).
    code = ("import contextlib, io, os, sys\n"
            "from rdmapin import cli\n"
            "out, err = io.StringIO(), io.StringIO()\n"
            "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "    rc = cli.main(['pages', '--pid', str(os.getpid()), '--addr', '0x0',\n"
            "                   '--len', '99999999999999999'])\n"
            "print(rc); print(out.getvalue().splitlines()[1] if rc == 0 else err.getvalue())\n"
            "print(next(x for x in open('/proc/self/status') if x.startswith('VmHWM:'))"
            ".split()[1])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    rc, line, maxrss_kib = proc.stdout.splitlines()
    assert rc == "0", line
    assert "Traceback" not in proc.stdout
    assert line.startswith("pages ") and "; mapped " in line and line.endswith(" of it")
    assert int(maxrss_kib) < 200 << 10  # the command's whole peak (VmHWM), numpy and all
