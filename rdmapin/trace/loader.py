"""Build the bcc program from bpf/*.c for what this kernel offers (rdmapin.trace.features):
one file per concern, joined into one program so they share the event buffer and counters,
parameterised only by -D defines. Kprobes are attached here, one by one, so a refusal
becomes a reported missing probe rather than a failed run."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from rdmapin import sources
from rdmapin.errors import RdmapinError, UnsupportedError
from rdmapin.kernel.tracefs import MOUNT_TRACEFS
from rdmapin.trace.features import (
    BCC_LOCK,
    FOLIO_PROBES,
    KPROBES,
    PIN_PROBES,
    Features,
    unavailable_line,
)

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
    plan: Plan | None = None
    refused: dict[str, str] = field(default_factory=dict)  # probe -> why the kernel refused

    def has(self, probe: str) -> bool:
        """The probe is attached: planned and not refused at load."""
        return self.plan is not None and self.plan.has(probe) and probe not in self.refused

    def unavailable_line(self) -> str | None:
        """What the probe found missing and what the kernel refused at load, in one line."""
        missing = dict(self.plan.missing) if self.plan else {}
        missing.update(self.refused)
        return unavailable_line(missing)

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
    if feat.has("filemap"):
        files.append("filemap.c")
    if feat.has("writeback"):
        files.append("writeback.c")
    if feat.has("umem") or any(feat.has(p) for p in PIN_PROBES):
        files.append("pins.c")
    if feat.has("mr_keys"):  # features grants it only with umem: pins.c is in
        files.append("mrkeys.c")
    return files


@dataclass(frozen=True)
class Plan:
    """What a load will compile and attach, decided from Features alone (no bcc, no kernel
    call): the files, the -D defines, the tracepoints and kprobes, the fexit programs. Doctor
    and ``rdmapin trace --explain`` print it; ``load`` carries it out."""

    files: tuple[str, ...]
    defines: Mapping[str, str | None]
    header_cflags: tuple[str, ...]
    header_env: Mapping[str, str]
    headers: str
    ringbuf: bool
    tracepoints: tuple[str, ...]                              # "category:event"
    kprobes: tuple[tuple[str, str, tuple[tuple[str, bool], ...]], ...]  # (probe, func, fns)
    fexit: tuple[str, ...]                                    # probes loaded as fexit
    missing: Mapping[str, str]                                # probe -> why not (the probe's)
    blocked: str | None = None                                # why nothing can load at all

    def cflags(self, extra: Mapping[str, str | None] | None = None) -> list[str]:
        defs = dict(self.defines)
        defs.update(extra or {})
        flags = [f"-I{sources.bpf_dir()}", *self.header_cflags]
        return flags + [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in sorted(defs.items())]

    def has(self, probe: str) -> bool:
        return any(name == probe for name, _func, _fns in self.kprobes) or probe in self.fexit

    def to_dict(self) -> dict:
        return {"files": list(self.files), "tracepoints": list(self.tracepoints),
                "kprobes": [func for _n, func, _f in self.kprobes], "fexit": list(self.fexit),
                "ringbuf": self.ringbuf, "headers": self.headers,
                "defines": dict(self.defines), "missing": dict(self.missing),
                "blocked": self.blocked}

    def lines(self) -> list[str]:
        """The plan for people: one idea per line."""
        if self.blocked:
            return [f"nothing will load: {self.blocked}"]
        out = [f"files       {', '.join(self.files) or '(none)'}",
               f"tracepoints {len(self.tracepoints)}: {', '.join(self.tracepoints)}",
               f"kprobes     {len(self.kprobes)}: "
               + (", ".join(func for _n, func, _f in self.kprobes) or "(none)"),
               f"fexit       {', '.join(self.fexit) or '(none)'}",
               f"buffer      {'ring buffer' if self.ringbuf else 'perf buffer'} "
               f"({RINGBUF_PAGES} pages)",
               f"headers     {self.headers}"]
        out += [f"missing     {name}: {why}" for name, why in sorted(self.missing.items())]
        out.append("cflags      " + " ".join(self.cflags()))
        return out


def plan(feat: Features, *, ringbuf: bool | None = None, fexit: bool = True) -> Plan:
    """The load ``feat`` allows: pure, so doctor, --explain and the tracer agree. ``fexit``
    False turns the per-folio fexit programs into kprobe pairs (when the kernel refused
    trampolines at load)."""
    use_ring = feat.ringbuf if ringbuf is None else ringbuf
    blocked = None
    if feat.tracefs is None:
        blocked = (f"tracefs is not mounted ({MOUNT_TRACEFS})" if os.geteuid() == 0
                   else "tracefs is not readable by this user (trace as root)")
    files = tuple(select_files(feat)) if blocked is None else ()
    if blocked is None and not files:
        blocked = ("no tracepoint this tracer needs is available "
                   f"({feat.unavailable_line() or 'unknown reason'})")
    defs = dict(feat.defines)
    fexit_names = tuple(n for n, d in FOLIO_PROBES.items()
                        if fexit and d in defs and feat.has(n))
    if not fexit:
        for d in FOLIO_PROBES.values():
            defs.pop(d, None)
    defs["RP_RINGBUF_PAGES"] = str(RINGBUF_PAGES)
    if use_ring:
        defs["RP_RINGBUF"] = None
    kprobes = tuple((name, func, tuple(fns)) for name, func, _d, fns in KPROBES
                    if feat.has(name) and name not in fexit_names) if files else ()
    kprobe_names = {name for name, _f, _d, _fns in KPROBES}
    tps = tuple(tp for name, tp in feat.available.items()
                if name not in kprobe_names) if files else ()
    return Plan(files=files, defines=MappingProxyType(defs),
                header_cflags=tuple(feat.header_cflags),
                header_env=MappingProxyType(dict(feat.header_env)), headers=feat.headers,
                ringbuf=use_ring, tracepoints=tps, kprobes=kprobes,
                fexit=fexit_names if files else (), missing=MappingProxyType(dict(feat.missing)),
                blocked=blocked)


def cflags(feat: Features, ringbuf: bool, extra: dict[str, str | None] | None = None) -> list[str]:
    """The compiler flags ``feat`` gives (a plan's, for callers that build by hand)."""
    return plan(feat, ringbuf=ringbuf).cflags(extra)


def source(files: list[str]) -> str:
    """The shared header and the files' text joined, not #included: bcc rewrites
    TRACEPOINT_PROBE and map methods (``rp_totals.lookup``) only in the main file. The files'
    own ``#include "rdmapin_events.h"`` then finds the guard set."""
    bpf = sources.bpf_dir()
    return "".join(f"#line 1 \"{bpf / name}\"\n" + (bpf / name).read_text()
                   for name in [HEADER, *files])


def load(target: Features | Plan, *, ringbuf: bool | None = None,
         extra: dict[str, str | None] | None = None) -> Program:
    """Compile and attach a plan (or the plan of ``target`` features); raises
    UnsupportedError when nothing can be watched here. What the kernel refuses at load (an
    fexit program, a kprobe) is recorded in ``Program.refused``; the plan and the features
    it came from are never edited."""
    from bcc import BPF  # imported late: the CLI's --help must work without bcc

    pl = target if isinstance(target, Plan) else plan(target, ringbuf=ringbuf)
    if pl.blocked:
        if "not mounted" in pl.blocked:
            # The tracer does not change the system's mounts: it says the one command.
            raise UnsupportedError("tracefs is not mounted: the tracer reads tracepoint "
                                   "formats and attaches through it", hint=MOUNT_TRACEFS)
        if "not readable" in pl.blocked:
            raise UnsupportedError("tracefs is not readable by this user",
                                   hint="trace as root (or with CAP_BPF+CAP_PERFMON)")
        raise UnsupportedError(pl.blocked,
                               hint="mount tracefs and run as root; kernel headers are "
                                    "needed for bcc")
    with BCC_LOCK:  # bcc's symbol cache and the environment are the process's
        return _load(BPF, pl, extra)


def _load(BPF: type, pl: Plan, extra: Mapping[str, str | None] | None) -> Program:
    """load() once the plan can be loaded: compile, then attach its kprobes."""
    refused: dict[str, str] = {}
    saved = {k: os.environ.get(k) for k in pl.header_env}
    os.environ.update(pl.header_env)
    try:
        text = source(list(pl.files)).encode()
        try:
            b = BPF(text=text, cflags=pl.cflags(extra))
        except Exception as e:
            if not pl.fexit:
                raise
            # The kernel refused an fexit program (trampolines off, lockdown): kprobes then.
            log.warning("fexit refused (%s); using kprobe+kretprobe pairs", e)
            for name in pl.fexit:
                refused[f"fexit:{name}"] = f"fexit refused: {e}"
            pl = _without_fexit(pl)
            b = BPF(text=text, cflags=pl.cflags(extra))
    except Exception as e:  # bcc raises bare Exception on compile/load failures
        raise RdmapinError(f"bcc could not build the tracer from {', '.join(pl.files)}: {e}",
                           hint="run with -v for the compiler output; headers: "
                           f"{pl.headers}") from e
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    prog = Program(bpf=b, files=list(pl.files), ringbuf=pl.ringbuf, plan=pl, refused=refused)
    prog.tracepoints = [tp.decode() if isinstance(tp, bytes) else tp
                        for tp in b.tracepoint_fds]
    prog.attached = list(pl.tracepoints)
    for name in pl.fexit:  # bcc attached the fexit programs while loading
        func = next(f for n, f, _d, _p in KPROBES if n == name)
        prog.kretfuncs.append(func)
        prog.attached.append(f"{func} (fexit)")
    for name, func, fns in pl.kprobes:
        try:
            for fn, ret in fns:
                if ret:
                    b.attach_kretprobe(event=func.encode(), fn_name=fn.encode(), maxactive=64)
                else:
                    b.attach_kprobe(event=func.encode(), fn_name=fn.encode())
                prog.kprobes.append((func, fn, ret))
        except Exception as e:  # bcc: "Failed to attach BPF program ... to kprobe ..."
            refused[name] = f"{func} refused the kprobe ({e})"
            continue
        prog.attached.append(func)
    return prog


def _without_fexit(pl: Plan) -> Plan:
    """The same plan with the fexit programs as kprobe pairs (after a refused load)."""
    defs = {k: v for k, v in pl.defines.items() if k not in FOLIO_PROBES.values()}
    extra = tuple((name, func, tuple(fns)) for name, func, _d, fns in KPROBES
                  if name in pl.fexit)
    return replace(pl, defines=MappingProxyType(defs), fexit=(), kprobes=pl.kprobes + extra)
