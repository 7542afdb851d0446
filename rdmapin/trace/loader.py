"""Build the bcc program from bpf/*.c for what this kernel offers (rdmapin.trace.features):
one file per concern, joined into one program so they share the event buffer and counters,
parameterised only by -D defines. Kprobes are attached here, one by one, so a refusal
becomes a reported missing probe rather than a failed run."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

from rdmapin import sources
from rdmapin.errors import RdmapinError, UnsupportedError
from rdmapin.kernel.tracefs import MOUNT_TRACEFS
from rdmapin.trace.features import FOLIO_PROBES, KPROBES, PIN_PROBES, Features

log = logging.getLogger(__name__)

HEADER = "rdmapin_events.h"
# 16 MiB (~160k events): compact_memory over a 512 MiB MR emitted ~46k per-folio failures
# faster than a TCG guest drains them when each of a pinned folio's 10 retries was an event
# (4 MiB lost ~7k); bpf/migrate.c now emits one per folio and migrate_pages call.
RINGBUF_PAGES = 4096


@dataclass
class Program:
    """A loaded, attached bcc program and what it covers."""

    bpf: object
    files: list[str]
    attached: list[str] = field(default_factory=list)
    ringbuf: bool = False
    kprobes: list[tuple[str, str, bool]] = field(default_factory=list)  # (func, fn, is_ret)
    kretfuncs: list[str] = field(default_factory=list)  # fexit programs (bcc attached them)
    tracepoints: list[str] = field(default_factory=list)
    paused: bool = False

    def pause(self) -> None:
        """Detach every probe, keeping the compiled program, maps and buffer (bcc compiles in
        seconds on a host but minutes in a TCG guest)."""
        if self.paused:
            return
        for tp in list(self.bpf.tracepoint_fds):
            self.bpf.detach_tracepoint(tp)
        for func in self.kretfuncs:
            self.bpf.detach_kretfunc(fn_name=func.encode())
        for func, fn, ret in self.kprobes:
            if ret:
                self.bpf.detach_kretprobe(event=func.encode(), fn_name=fn.encode())
            else:
                self.bpf.detach_kprobe(event=func.encode(), fn_name=fn.encode())
        self.paused = True

    def resume(self) -> None:
        if not self.paused:
            return
        for tp in self.tracepoints:
            cat, _, ev = tp.partition(":")
            self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=f"tracepoint__{cat}__{ev}".encode())
        for func in self.kretfuncs:
            self.bpf.attach_kretfunc(fn_name=func.encode())
        for func, fn, ret in self.kprobes:
            if ret:
                self.bpf.attach_kretprobe(event=func.encode(), fn_name=fn.encode(),
                                          maxactive=64)
            else:
                self.bpf.attach_kprobe(event=func.encode(), fn_name=fn.encode())
        self.paused = False

    def close(self) -> None:
        with contextlib.suppress(Exception):  # bcc cleanup is best effort at exit
            self.bpf.cleanup()


def select_files(feat: Features) -> list[str]:
    files = []
    if feat.has("migrate"):
        files.append("migrate.c")
    if feat.has("compaction"):
        files.append("compaction.c")
    if feat.has("isolation"):
        files.append("isolation.c")
    if feat.has("collapse"):
        files.append("collapse.c")
    if feat.has("umem") or any(feat.has(p) for p in PIN_PROBES):
        files.append("pins.c")
    return files


def cflags(feat: Features, ringbuf: bool, extra: dict[str, str | None] | None = None) -> list[str]:
    defs = dict(feat.defines)
    defs["RP_RINGBUF_PAGES"] = str(RINGBUF_PAGES)
    if ringbuf:
        defs["RP_RINGBUF"] = None
    defs.update(extra or {})
    flags = [f"-I{sources.bpf_dir()}", *feat.header_cflags]
    flags += [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in sorted(defs.items())]
    return flags


def source(files: list[str]) -> str:
    """The shared header and the files' text joined, not #included: bcc rewrites
    TRACEPOINT_PROBE and map methods (``rp_totals.lookup``) only in the main file. The files'
    own ``#include "rdmapin_events.h"`` then finds the guard set."""
    bpf = sources.bpf_dir()
    return "".join(f"#line 1 \"{bpf / name}\"\n" + (bpf / name).read_text()
                   for name in [HEADER, *files])


def load(feat: Features, *, ringbuf: bool | None = None,
         extra: dict[str, str | None] | None = None) -> Program:
    """Compile and attach; raises UnsupportedError when nothing can be watched here."""
    from bcc import BPF  # imported late: the CLI's --help must work without bcc

    if feat.tracefs is None:
        if os.geteuid() != 0:
            raise UnsupportedError("tracefs is not readable by this user",
                                   hint="trace as root (or with CAP_BPF+CAP_PERFMON)")
        # The tracer does not change the system's mounts: it says the one command that does.
        raise UnsupportedError("tracefs is not mounted: the tracer reads tracepoint formats "
                               "and attaches through it", hint=MOUNT_TRACEFS)
    files = select_files(feat)
    if not files:
        raise UnsupportedError(
            "no tracepoint this tracer needs is available "
            f"({feat.unavailable_line() or 'unknown reason'})",
            hint="mount tracefs and run as root; kernel headers are needed for bcc")
    use_ring = feat.ringbuf if ringbuf is None else ringbuf
    saved = {k: os.environ.get(k) for k in feat.header_env}
    os.environ.update(feat.header_env)
    try:
        try:
            b = BPF(text=source(files).encode(), cflags=cflags(feat, use_ring, extra))
        except Exception as e:
            fexits = [d for d in FOLIO_PROBES.values() if d in feat.defines]
            if not fexits:
                raise
            # The kernel refused an fexit program (trampolines off, lockdown): kprobes then.
            log.warning("fexit refused (%s); using kprobe+kretprobe pairs", e)
            for d in fexits:
                feat.defines.pop(d)
            b = BPF(text=source(files).encode(), cflags=cflags(feat, use_ring, extra))
    except Exception as e:  # bcc raises bare Exception on compile/load failures
        raise RdmapinError(f"bcc could not build the tracer from {', '.join(files)}: {e}",
                           hint="run with -v for the compiler output; headers: "
                           f"{feat.headers}") from e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    prog = Program(bpf=b, files=files, ringbuf=use_ring)
    prog.tracepoints = [tp.decode() if isinstance(tp, bytes) else tp
                        for tp in b.tracepoint_fds]
    prog.attached = [feat.available[n] for n in feat.available
                     if not n.startswith(("folio", "umem", "pin"))]
    fexit = {n for n, d in FOLIO_PROBES.items() if d in feat.defines and n in feat.available}
    for name, func, _define, fns in KPROBES:
        if name not in feat.available:
            continue
        if name in fexit:  # bcc attached the fexit program while loading
            prog.kretfuncs.append(func)
            prog.attached.append(f"{func} (fexit)")
            continue
        try:
            for fn, ret in fns:
                if ret:
                    b.attach_kretprobe(event=func.encode(), fn_name=fn.encode(), maxactive=64)
                else:
                    b.attach_kprobe(event=func.encode(), fn_name=fn.encode())
                prog.kprobes.append((func, fn, ret))
        except Exception as e:  # bcc: "Failed to attach BPF program ... to kprobe ..."
            feat.available.pop(name, None)
            feat.missing[name] = f"{func} refused the kprobe ({e})"
            continue
        prog.attached.append(func)
    return prog
