"""ci/vm/run builds the guest the issue asks for: TCG, two NUMA nodes, no outside network,
hugetlb pages, the kernel console captured; checked on the real script's --dry-run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

TOP = Path(__file__).resolve().parents[2]
RUN = TOP / "ci" / "vm" / "run"


def dry_run(*opts: str) -> list[str]:
    out = subprocess.run([str(RUN), *opts, "--dry-run", "--", "sh", "-c", "exit 7"],
                         check=True, capture_output=True, text=True).stdout
    return shlex.split(out.strip().splitlines()[-1])


def test_defaults_tcg_two_nodes_no_network():
    argv = dry_run()
    assert argv[0] == "vng"
    assert "--disable-kvm" in argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--numa"] == ["1024M", "1024M"]
    assert "--network" not in argv and "-n" not in argv
    appends = [argv[i + 1] for i, a in enumerate(argv) if a == "--append"]
    assert "hugepages=64" in appends and "console=hvc0" in appends
    exec_cmd = shlex.split(argv[argv.index("--exec") + 1])
    assert exec_cmd[0].endswith("ci/vm/guest-init")
    assert exec_cmd[-4:] == ["--", "sh", "-c", "exit 7"]  # quoting survives
    assert exec_cmd[exec_cmd.index("--memlock"):][:2] == ["--memlock", "unlimited"]


def test_options_reach_the_guest():
    argv = dry_run("--memory", "4G", "--nodes", "1", "--hugepages", "8", "--memlock", "1024",
                   "--append", "movablecore=1G", "--kvm")
    assert "--disable-kvm" not in argv
    assert "--numa" not in argv
    assert argv[argv.index("--memory") + 1] == "4096M"
    appends = [argv[i + 1] for i, a in enumerate(argv) if a == "--append"]
    assert "hugepages=8" in appends and "movablecore=1G" in appends
    assert "--memlock 1024" in argv[argv.index("--exec") + 1]


def test_dimm_puts_a_hotpluggable_dimm_on_node1():
    argv = dry_run("--dimm", "512M")
    qemu = shlex.split(next(a for a in argv if a.startswith("--qemu-opts=")).split("=", 1)[1])
    assert "pc-dimm,id=dimm1,memdev=hp1,node=1" in qemu
    assert "memory-backend-ram,id=hp1,size=512M" in qemu
    assert "memhp_default_state=online_kernel" in argv


@pytest.mark.parametrize("bad", ["2T", "lots", "-1"])
def test_bad_sizes_are_usage_errors(bad):
    r = subprocess.run([str(RUN), "--memory", bad, "--dry-run", "--", "true"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "expected N, NM or NG" in r.stderr


def test_pmem_adds_an_nvdimm_with_a_label_area_and_its_setup():
    argv = dry_run("--pmem", "1G", "--dimm", "512M")
    qemu = shlex.split(next(a for a in argv if a.startswith("--qemu-opts=")).split("=", 1)[1])
    assert qemu[qemu.index("-machine") + 1] == "nvdimm=on"
    assert "memory-backend-memfd,id=pmem0,size=1024M,share=on" in qemu
    nvdimm = next(w for w in qemu if w.startswith("nvdimm,"))
    assert "memdev=pmem0" in nvdimm and "label-size=128K" in nvdimm
    # One -m for both: the DIMM's two slots and the NVDIMM's one, maxmem covering both.
    assert [qemu[i + 1] for i, w in enumerate(qemu) if w == "-m"] == \
        ["2048M,slots=3,maxmem=3584M"]
    exec_cmd = shlex.split(argv[argv.index("--exec") + 1])
    tail = exec_cmd[exec_cmd.index("--") + 1:]
    assert tail[0].endswith("ci/vm/guest-pmem") and tail[1:] == ["--", "sh", "-c", "exit 7"]


WAIT_GUEST = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import guest
log = Path(sys.argv[2])
log.write_text(sys.argv[4])
proc = guest.start([sys.executable, "-c", sys.argv[3]], stdin_ok=False)
rc, why = guest.wait_guest(proc, log, timeout=4)
print(rc, why)
"""


@pytest.mark.parametrize("child, console, want", [
    ("import time; time.sleep(60)", "booting\n", (125, "did not reach guest-init")),
    ("import time; time.sleep(60)", "rdmapin-guest: step_mount_tracing\n", (124, "timed out")),
    ("raise SystemExit(3)", "", (3, "None")),
])
def test_wait_guest_stops_a_boot_that_never_reaches_guest_init(tmp_path, child, console, want):
    """A guest whose console never shows guest-init's first step is stopped after
    RDMAPIN_VM_BOOT_TIMEOUT (status 125) instead of waiting out --timeout (124); one that
    booted runs on to the timeout; one that ends gives its own status."""
    out = subprocess.run(
        [sys.executable, "-c", WAIT_GUEST, str(RUN.parent), str(tmp_path / "console.log"),
         child, console], capture_output=True, text=True, timeout=60,
        env={**os.environ, "RDMAPIN_VM_BOOT_TIMEOUT": "1"}, check=True).stdout.split(maxsplit=1)
    assert (int(out[0]), want[1] in out[1]) == (want[0], True), out
