"""A failed test's buffers are unmapped before the next test (and before its own rerun):
without tests/failed_frames.py a failed 512 MiB test kept its memory into the rerun and the
guest's pytest was OOM-killed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

INNER = '''
import mmap
import pytest

def shmem_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssShmem:"):
            return int(line.split()[1]) >> 10

@pytest.mark.flaky(reruns=1)
def test_fails_holding_64_mib():
    buf = mmap.mmap(-1, 64 << 20)
    view = memoryview(buf)
    for off in range(0, len(buf), 4096):
        view[off] = 1
    assert shmem_mib() < 100, f"a failed attempt's 64 MiB still mapped: {shmem_mib()} MiB"
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


def test_failed_attempts_memory_is_freed_before_the_rerun_and_the_next_test(tmp_path):
    r = _run(tmp_path, "-p", "failed_frames")
    assert "1 failed, 1 passed, 1 rerun" in r.stdout, r.stdout + r.stderr
    assert "AssertionError: fails on purpose" in r.stdout, r.stdout
    assert "still mapped" not in r.stdout, r.stdout


def test_without_the_plugin_the_memory_stays(tmp_path):
    """The control: the same session without the plugin keeps both attempts' buffers."""
    r = _run(tmp_path)
    assert "a failed attempt's 64 MiB still mapped" in r.stdout, r.stdout + r.stderr
    assert "MiB of a failed test still mapped" in r.stdout, r.stdout
