"""A failed test's buffers are unmapped before the next test: without tests/failed_frames.py
a failed 512 MiB test kept its memory into the next one (a rerun, then) and the guest's
pytest was OOM-killed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

TESTS = Path(__file__).resolve().parents[1]

INNER = '''
import mmap

def shmem_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssShmem:"):
            return int(line.split()[1]) >> 10

def test_fails_holding_64_mib():
    buf = mmap.mmap(-1, 64 << 20)
    view = memoryview(buf)
    for off in range(0, len(buf), 4096):
        view[off] = 1
    raise AssertionError("fails on purpose")

def test_next_test_starts_without_it():
    assert shmem_mib() < 32, f"{shmem_mib()} MiB of a failed test still mapped"
'''


def _run(tmp_path: Path, *plugin: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(INNER)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--tb=line", "-p", "no:cacheprovider", *plugin,
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"})


def test_failed_tests_memory_is_freed_before_the_next_test(tmp_path):
    r = _run(tmp_path, "-p", "failed_frames")
    assert "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
    assert "AssertionError: fails on purpose" in r.stdout, r.stdout
    assert "still mapped" not in r.stdout, r.stdout


def test_without_the_plugin_the_memory_stays(tmp_path):
    """The control: the same session without the plugin keeps the failed test's buffer."""
    r = _run(tmp_path)
    assert "MiB of a failed test still mapped" in r.stdout, r.stdout + r.stderr
