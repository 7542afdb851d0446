"""Can rdmapin's tracer run here: BTF, kprobes, the tracepoints and kernel functions it
attaches to, bcc, and headers for bcc. The tracer's own feature probe
(rdmapin.trace.features) is the authority, so doctor and `rdmapin trace` never disagree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from rdmapin.doctor import Check, Status, kconfig
from rdmapin.kernel import tracefs
from rdmapin.trace import features as _features
from rdmapin.trace import loader


def readiness(try_load: bool = False) -> Iterator[Check]:
    btf = Path("/sys/kernel/btf/vmlinux")
    if btf.exists():
        yield Check("btf", Status.PASS, f"{btf} ({btf.stat().st_size >> 20} MiB)",
                    data={"path": str(btf)})
    else:
        yield Check("btf", Status.WARN, "no /sys/kernel/btf/vmlinux", data={"path": None},
                    fix="a kernel with CONFIG_DEBUG_INFO_BTF (struct page offsets for the "
                        "pin inventory come from it)")

    feat = _features.probe()
    tfs = feat.tracefs
    if tfs is None:
        yield from _no_tracefs()
    else:
        yield from _probes(feat, tfs)
    yield _plan_check(feat, try_load)

    try:
        import bcc
        version = getattr(bcc, "__version__", "?")
        yield Check("bcc", Status.PASS, f"bcc {version} importable", data={"version": version})
    except ImportError as e:
        yield Check("bcc", Status.FAIL, f"bcc not importable: {e}", data={"version": None},
                    fix="apt-get install python3-bpfcc (and let the venv see system "
                        "site-packages)")

    release = os.uname().release
    data = {"headers": feat.headers, "env": dict(feat.header_env)}
    if feat.headers in ("running", "kheaders"):
        where = (f"/lib/modules/{release}/build" if feat.headers == "running"
                 else "/sys/kernel/kheaders.tar.xz")
        yield Check("headers", Status.PASS, where, data=data)
    elif feat.headers.startswith("stand-in"):
        yield Check("headers", Status.WARN, f"none for {release}; {feat.headers} "
                    "(tracepoints only)", data=data,
                    fix=f"apt-get install linux-headers-{release}, or modprobe kheaders")
    else:
        yield Check("headers", Status.FAIL, f"no kernel headers for {release}", data=data,
                    fix=f"apt-get install linux-headers-{release}, or modprobe kheaders; "
                        "or trace in the VM: ci/vm/run -- rdmapin trace")


def _no_tracefs() -> Iterator[Check]:
    """tracefs unreadable: its FAIL, and the checks that need it, each saying why it could
    not be made (doctor emits the same set of names on every host)."""
    mounted = [p for p in tracefs.TRACEFS_CANDIDATES if os.path.ismount(p)]
    if mounted:
        why = f"{mounted[0]} is not readable by this user"
        fix = ("trace as root, or with CAP_BPF+CAP_PERFMON after "
               f"mount -o remount,mode=755 {mounted[0]}")
        yield Check("tracefs", Status.FAIL, why, data={"mounted": str(mounted[0])}, fix=fix)
    else:
        why = "tracefs not mounted"
        fix = tracefs.MOUNT_TRACEFS
        yield Check("tracefs", Status.FAIL, why, data={"mounted": None}, fix=fix)
    unknown = f"not checked: {why}"
    yield Check("kprobes", Status.WARN, unknown, data={"kprobes": None}, fix=fix)
    wanted = sorted(tp for _n, tp, _d, _f in _features.TRACEPOINTS)
    yield Check("tracepoints", Status.WARN, unknown, data={"wanted": wanted, "missing": None},
                fix=fix)
    fns = sorted({func for _n, func, _d, _p in _features.KPROBES})
    yield Check("kprobe fns", Status.WARN, unknown, data={"wanted": fns, "missing": None},
                fix=fix)


def _probes(feat: _features.Features, tfs: Path) -> Iterator[Check]:
    """kprobes, tracepoints and kprobe-able functions, as the tracer's probe found them."""
    yield Check("tracefs", Status.PASS, str(tfs), data={"mounted": str(tfs)})
    if (tfs / "kprobe_events").exists():
        yield Check("kprobes", Status.PASS, f"{tfs}/kprobe_events", data={"kprobes": True})
    else:
        why = ("kernel built without CONFIG_KPROBES"
               if kconfig.value("CONFIG_KPROBES") == "n" else "no kprobe_events in tracefs")
        yield Check("kprobes", Status.WARN, f"{why}: no pin/unpin or per-folio probes",
                    data={"kprobes": False},
                    fix="tracepoint-only tracing works here; for pin/unpin and per-folio "
                        "migration failures trace in the VM: ci/vm/run -- rdmapin trace")

    tps = {name: tp for name, tp, _define, _fields in _features.TRACEPOINTS}
    # Probes with a -D define are optional: the tracer builds without them.
    optional = {name for name, _tp, define, _fields in _features.TRACEPOINTS if define}
    gone = {n: feat.missing[n] for n in tps if n in feat.missing
            and "headers" not in feat.missing[n]}
    required = {n: why for n, why in gone.items() if n not in optional}
    data = {"wanted": sorted(tps.values()), "missing": gone}
    if required:
        yield Check("tracepoints", Status.WARN,
                    f"{len(tps) - len(gone)}/{len(tps)} usable; missing " + ", ".join(required),
                    data=data, fix="; ".join(f"{n}: {why}" for n, why in required.items()))
    else:
        extra = f"; optional {', '.join(gone)} absent" if gone else ""
        yield Check("tracepoints", Status.PASS,
                    f"{len(tps) - len(gone)}/{len(tps)} present{extra}", data=data)

    fns = {name: func for name, func, _define, _progs in _features.KPROBES}
    fn_missing = {n: feat.missing[n] for n in fns if n in feat.missing}
    data = {"wanted": sorted(set(fns.values())), "missing": fn_missing}
    if fn_missing and (tfs / "kprobe_events").exists():
        yield Check("kprobe fns", Status.WARN,
                    f"{len(fns) - len(fn_missing)}/{len(fns)} attachable; missing "
                    + ", ".join(sorted({fns[n] for n in fn_missing})), data=data,
                    fix="; ".join(sorted(set(fn_missing.values())))
                        + " (ib_umem_* and rdma_restrack_add are ib_core's: modprobe ib_uverbs)")
    elif fn_missing:
        yield Check("kprobe fns", Status.WARN, "none attachable: no kprobes on this kernel",
                    data=data, fix="trace in the VM for pin/unpin and per-folio probes: "
                                   "ci/vm/run -- rdmapin trace")
    else:
        yield Check("kprobe fns", Status.PASS,
                    ", ".join(sorted(set(fns.values()))), data=data)


def _plan_check(feat: _features.Features, try_load: bool) -> Check:
    """The tracer's plan (the one ``rdmapin trace --explain`` prints) and, when asked, what a
    real load of it attached and what the kernel refused."""
    pl = loader.plan(feat)
    data: dict = {"plan": pl.to_dict(), "tried": try_load, "refused": None}
    if pl.blocked:
        fix = (tracefs.MOUNT_TRACEFS if "not mounted" in pl.blocked
               else "trace as root, with kernel headers for bcc")
        return Check("trace plan", Status.WARN, f"nothing will load: {pl.blocked}", data=data,
                     fix=fix)
    what = (f"{len(pl.files)} files, {len(pl.tracepoints)} tracepoints, "
            f"{len(pl.kprobes)} kprobes, {len(pl.fexit)} fexit")
    if not try_load:
        return Check("trace plan", Status.PASS, f"{what}; load not tried (--try-load)",
                     data=data)
    try:
        prog = loader.load(pl)
    except Exception as e:  # bcc's compile/verifier errors are bare Exceptions
        return Check("trace plan", Status.FAIL, f"{what}; load failed: {e}"[:400], data=data,
                     fix="rdmapin trace --explain shows the plan; run with -v for bcc's output")
    try:
        data["refused"] = dict(prog.refused)
        data["attached"] = list(prog.attached)
    finally:
        prog.close()
    if prog.refused:
        return Check("trace plan", Status.WARN,
                     f"{what}; loaded, the kernel refused {', '.join(sorted(prog.refused))}",
                     data=data, fix="; ".join(sorted(set(prog.refused.values()))))
    return Check("trace plan", Status.PASS, f"{what}; loaded and attached all", data=data)
