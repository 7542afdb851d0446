"""A fresh machine has no tracefs mounted: doctor still emits its whole set of checks, and
`rdmapin trace` exits 1 with the one command that mounts it, changing no mount itself. Each
state is made in a private mount namespace (unshare -m), so the host is left as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from rdmapin.kernel import tracefs

# About the host's mounts (a guest always has tracefs): the host runs it.
pytestmark = [pytest.mark.host_only,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                 reason="mount namespaces need root and unshare")]

UNMOUNT = ("for m in /sys/kernel/debug/tracing /sys/kernel/debug /sys/kernel/tracing; do "
           "umount -l $m 2>/dev/null; done; ")
MOUNT = "mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing; "


def _in_ns(setup: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         setup + 'exec "$@"', "sh", *cmd],
        capture_output=True, text=True, timeout=300, check=False)


def _doctor(setup: str) -> dict[str, dict]:
    proc = _in_ns(setup, sys.executable, "-m", "rdmapin", "doctor", "-j")
    assert proc.stderr == ""
    return {r["check"]: r for r in map(json.loads, proc.stdout.splitlines())}


def test_doctor_emits_the_same_checks_whether_tracefs_is_mounted_or_not():
    unmounted, mounted = _doctor(UNMOUNT), _doctor(MOUNT)
    assert list(unmounted) == list(mounted)
    assert {"tracefs", "kprobes", "tracepoints", "kprobe fns", "bcc", "headers"} <= set(mounted)
    assert unmounted["tracefs"]["status"] == "FAIL"
    assert unmounted["tracefs"]["fix"] == tracefs.MOUNT_TRACEFS
    for name in ("kprobes", "tracepoints", "kprobe fns"):
        assert unmounted[name]["status"] == "WARN"
        assert unmounted[name]["value"] == "not checked: tracefs not mounted"
    assert mounted["tracefs"]["status"] == "PASS"
    assert mounted["tracefs"]["value"] == "/sys/kernel/tracing"
    # What does not need tracefs reads the same either way.
    for name in ("bcc", "headers", "btf"):
        assert unmounted[name] == mounted[name]


def test_trace_without_tracefs_exits_1_with_the_mount_command_and_mounts_nothing():
    check = "; mountpoint -q /sys/kernel/tracing && echo MOUNTED || echo UNMOUNTED"
    proc = _in_ns(UNMOUNT, "sh", "-c",
                  f"{sys.executable} -m rdmapin trace -d 1; echo rc=$?{check}")
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("rdmapin: error: tracefs is not mounted")
    assert f"(hint: {tracefs.MOUNT_TRACEFS})" in proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["rc=1", "UNMOUNTED"]
