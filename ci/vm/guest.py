"""One QEMU guest with soft-RoCE, as ci/vm/run and ci/vm/pair boot it.

The pieces both launchers share: the guest's configuration turned into a virtme-ng argv, the
kernel cache, starting vng in its own process group, and reading the outcome back from the
guest's kernel console (guest-init's exit-status mark, a panic, a timeout).
Standard library only: it runs before the venv exists.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
HERE = TOP / "ci" / "vm"
EXIT_MARK = "rdmapin-guest: exit status "
RO_TAG = "rdmapin_ro"  # the 9p export guest-init mounts with cache=loose
BOOT_MARK = "rdmapin-guest: step_"  # guest-init's first console line
# A guest that has not reached guest-init by then never will (a boot that hung, a command
# line virtme-ng could not hand over): stop it instead of waiting out --timeout. Boots take
# 40-80 s here under TCG with three guests on two cores.
BOOT_S = float(os.environ.get("RDMAPIN_VM_BOOT_TIMEOUT", "600"))


def size_mib(text: str) -> int:
    """'2G' / '512M' / '1536' (MiB) -> MiB."""
    m = re.fullmatch(r"(\d+)([MmGg]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N, NM or NG")
    n = int(m.group(1))
    return n * 1024 if m.group(2).lower() == "g" else n


@dataclass
class GuestConfig:
    """Everything that shapes one guest; built from the command line, turned into argv."""

    kernel_dir: Path
    kver: str
    memory_mib: int = 2048
    nodes: int = 2
    cpus: int = 2
    hugepages: int = 64
    memlock: str = "unlimited"
    dimm_mib: int = 0
    pmem_mib: int = 0  # an emulated NVDIMM of this size (ci/vm/guest-pmem sets it up)
    append: list[str] = field(default_factory=list)
    qemu_opts: list[str] = field(default_factory=list)
    kvm: bool = False
    results: Path = TOP / "results"
    command: list[str] = field(default_factory=list)
    name: str = "rdmapin-vm"  # the guest's hostname
    init_args: list[str] = field(default_factory=list)  # extra guest-init options

    def vng_argv(self, console_log: Path, interactive: bool) -> list[str]:
        argv = [
            "vng", "--run", str(self.kernel_dir / "boot" / f"vmlinuz-{self.kver}"),
            "--force-9p", "--user", "root", "--cpus", str(self.cpus),
            "--rwdir", str(TOP), "--name", self.name,
        ]
        if self.results.resolve() != TOP and not self.results.resolve().is_relative_to(TOP):
            argv += ["--rwdir", str(self.results)]
        if not self.kvm:
            argv.append("--disable-kvm")
        # The host root once more, read-only, for guest-init to mount with a page cache
        # (step_cached_trees): virtme-ng's own 9p mounts have none.
        qemu = ["-fsdev", f"local,id={RO_TAG},path=/,security_model=none,readonly=on",
                "-device", f"virtio-9p-pci,fsdev={RO_TAG},mount_tag={RO_TAG}",
                *self.qemu_opts]
        append = [f"hugepages={self.hugepages}"] if self.hugepages else []
        if self.dimm_mib:
            # Boot memory is node 0; node 1 holds only a hot-plugged DIMM, onlined as
            # movable-capable kernel memory so its blocks can be offlined by the tests.
            argv += ["--memory", f"{self.memory_mib}M", "--numa", f"{self.memory_mib}M"]
            qemu += [
                "-object", f"memory-backend-ram,id=hp1,size={self.dimm_mib}M",
                "-numa", "node,nodeid=1",
                "-device", "pc-dimm,id=dimm1,memdev=hp1,node=1",
            ]
            append.append("memhp_default_state=online_kernel")
        else:
            argv += ["--memory", f"{self.memory_mib}M"]
            if self.nodes > 1:
                per = self.memory_mib // self.nodes
                sizes = [per] * (self.nodes - 1) + [self.memory_mib - per * (self.nodes - 1)]
                for s in sizes:
                    argv += ["--numa", f"{s}M"]
        if self.dimm_mib or self.pmem_mib:
            slots = (2 if self.dimm_mib else 0) + (1 if self.pmem_mib else 0)
            maxmem = self.memory_mib + self.dimm_mib + self.pmem_mib
            qemu += ["-m", f"{self.memory_mib}M,slots={slots},maxmem={maxmem}M"]
        if self.pmem_mib:
            # An NVDIMM whose label area (>= 128 KiB) lets ndctl carve namespaces; a memfd
            # backs it (shared, nothing left on disk), so every boot starts blank. It sits on
            # the last node, which has no CPU: a devdax namespace onlined as kernel memory
            # (daxctl system-ram) then gets no kernel allocations of the CPUs' node, which
            # would keep its blocks from ever going offline (tests/vm/test_dax_system_ram.py).
            pmem_node = self.nodes - 1 if not self.dimm_mib else 0
            qemu += [
                "-machine", "nvdimm=on",
                "-object", f"memory-backend-memfd,id=pmem0,size={self.pmem_mib}M,share=on",
                "-device", f"nvdimm,id=nvdimm0,memdev=pmem0,label-size=128K,node={pmem_node}",
            ]
        if not interactive:
            # A second console on virtio (hvc0) captures the kernel log into a file, so a
            # panic or hang can be shown; ttyS0 stays virtme-ng's.
            qemu += [
                "-chardev", f"file,id=rdmapinlog,path={console_log}",
                "-device", "virtio-serial-pci",
                "-device", "virtconsole,chardev=rdmapinlog",
            ]
            append += ["console=hvc0", "loglevel=6"]
        append += self.append
        if qemu:
            argv.append("--qemu-opts=" + shlex.join(qemu))
        for a in append:
            argv += ["--append", a]
        guest = [
            str(HERE / "guest-init"),
            "--kernel-dir", str(self.kernel_dir), "--memlock", self.memlock,
            "--results", str(self.results), "--top", str(TOP), *self.init_args, "--",
            *([str(HERE / "guest-pmem"), "--"] if self.pmem_mib else []), *self.command,
        ]
        if interactive:
            # virtme-ng's script mode has no tty: give the guest a real console shell whose
            # login "shell" is guest-shell, which reads this setup from the kernel command line.
            argv += ["--shell", str(HERE / "guest-shell"), "--append",
                     "rdmapin.init=" + base64.b64encode(shlex.join(guest).encode()).decode()]
        else:
            _fits_kernel_cmdline(shlex.join(guest), append)
            argv += ["--exec", shlex.join(guest)]
        return argv


# x86's COMMAND_LINE_SIZE. virtme-ng hands --exec's command to the guest base64-encoded on the
# kernel command line, after ~750 bytes of its own (measured); a longer line is cut and the
# guest sits idle at boot, never running the command (ci/test passing 40 test files did that).
CMDLINE_MAX = 2048
VIRTME_OWN = 900


def _fits_kernel_cmdline(command: str, append: list[str]) -> None:
    size = len(base64.b64encode(command.encode())) + sum(len(a) + 1 for a in append)
    if size + VIRTME_OWN >= CMDLINE_MAX:
        raise SystemExit(
            f"ci/vm: the guest command ({len(command)} bytes, {size} with --append as the "
            f"kernel command line carries it) does not fit the kernel's {CMDLINE_MAX}-byte "
            f"command line next to virtme-ng's own ~{VIRTME_OWN}: pass fewer arguments (a "
            "directory instead of many files, or a script in the shared tree)")


def kernel_series() -> tuple[list[str], str]:
    """KERNELS and KERNEL_DEFAULT from ci/vm/kernel.env (the one place versions live)."""
    env = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', (HERE / "kernel.env").read_text(), re.M))
    return env["KERNELS"].split(), env["KERNEL_DEFAULT"]


def fetch_kernel(series: str) -> Path:
    out = subprocess.run([str(HERE / "fetch-kernel"), series], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    return Path(out.splitlines()[-1])


def find_vng() -> bool:
    """vng on PATH (the venv's bin/ added when it is not); False when it is nowhere."""
    if shutil.which("vng") is None:
        venv_bin = TOP / ".venv" / "bin"
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ['PATH']}"
    return shutil.which("vng") is not None


def console_tail(log: Path, lines: int = 40) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no console log)"
    return "\n".join(text[-lines:])


# Kernel lines that explain a test process that vanished or a command that failed oddly:
# the OOM killer (mm/oom_kill.c), a user-space crash (arch/x86 show_signal_msg), kernel
# warnings and oopses, hung tasks.
ALARMS = re.compile(r"Out of memory|oom-kill|Killed process|segfault at|general protection"
                    r"|traps: |BUG: |WARNING: |Oops|blocked for more than")


def console_alarms(log: Path, limit: int = 20) -> list[str]:
    """The console's lines that say the kernel killed, caught or warned about something
    (the first ``limit``): printed when CMD fails, so CI's log says why."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in text if ALARMS.search(line)][:limit]


def kill(proc: subprocess.Popen, sig: int) -> None:
    """Stop vng and its QEMU (its own process group unless interactive)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(sig)
    proc.wait()


def failure(console_log: Path) -> str | None:
    """Why a non-interactive guest that ended by itself did not finish its command, or None
    when it did: guest-init writes the exit-status mark as its last console line, which a
    panic never reaches."""
    log = console_log.read_text(errors="replace") if console_log.exists() else ""
    if "Kernel panic" in log:
        return "guest kernel crashed"
    if EXIT_MARK not in log:
        return "guest died before CMD finished"
    return None


def reached_guest_init(console_log: Path) -> bool:
    try:
        return BOOT_MARK in console_log.read_text(errors="replace")
    except OSError:
        return False


def boot_stalled(console_log: Path, elapsed: float) -> str | None:
    """Why to stop a guest that is ``elapsed`` seconds into its boot, or None."""
    if elapsed > BOOT_S and not reached_guest_init(console_log):
        return (f"the guest did not reach guest-init within {BOOT_S:.0f} s of its start "
                "(RDMAPIN_VM_BOOT_TIMEOUT): its boot hung")
    return None


def wait_guest(proc: subprocess.Popen, console_log: Path, timeout: float,
               watch_boot: bool = True) -> tuple[int, str | None]:
    """(exit status, None) when vng ends by itself; (124, why) past ``timeout``, (125, why)
    for a boot that stalled (boot_stalled): the guest is killed then."""
    t0 = time.monotonic()
    booted = not watch_boot
    while True:
        try:
            return proc.wait(timeout=min(1.0, max(0.0, t0 + timeout - time.monotonic()))), None
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - t0
        if elapsed >= timeout:
            kill(proc, signal.SIGKILL)
            return 124, f"timed out after {timeout:.0f} s"
        if not booted:
            why = boot_stalled(console_log, elapsed)
            if why:
                kill(proc, signal.SIGKILL)
                return 125, why
            booted = elapsed > BOOT_S


def guest_status(console_log: Path) -> int | None:
    """CMD's exit status as guest-init marked it on the console (None: no mark)."""
    log = console_log.read_text(errors="replace") if console_log.exists() else ""
    marks = re.findall(re.escape(EXIT_MARK) + r"(\d+)", log)
    return int(marks[-1]) if marks else None


def start(vng: list[str], *, interactive: bool = False, stdin_ok: bool = True,
          stdout: int | None = None, stderr: int | None = None) -> subprocess.Popen:
    """vng in a process group of its own (so a timeout kills its QEMU too), unless the guest
    shell owns the terminal. QEMU forwards stdin to the guest; CI may give us none.

    QEMU opens the guest's stdout and stderr as files at /proc/self/fd/1 and 2, each with
    its own offset: into a regular file they overwrite each other (pipes are fine)."""
    return subprocess.Popen(vng, start_new_session=not interactive,
                            stdin=None if stdin_ok else subprocess.DEVNULL, stdout=stdout,
                            stderr=stderr)

