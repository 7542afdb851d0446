"""Can rdmapin's tracer run here: BTF, kprobes, the tracepoints it uses, bcc, headers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from rdmapin.doctor import Check, Status, kconfig

TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# The events rdmapin's tracer attaches to: compaction passes, migrations and their
# failures, range isolation (memory offline, alloc_contig_range) and THP collapse.
TRACEPOINTS = (
    "compaction/mm_compaction_begin",
    "compaction/mm_compaction_end",
    "compaction/mm_compaction_isolate_migratepages",
    "compaction/mm_compaction_migratepages",
    "migrate/mm_migrate_pages",
    "migrate/mm_migrate_pages_start",
    "page_isolation/test_pages_isolated",
    "huge_memory/mm_collapse_huge_page",
)


def tracefs() -> Path | None:
    for p in TRACEFS_MOUNTS:
        if (p / "events").is_dir():
            return p
    return None


def readiness() -> Iterator[Check]:
    btf = Path("/sys/kernel/btf/vmlinux")
    if btf.exists():
        yield Check("btf", Status.PASS, f"{btf} ({btf.stat().st_size >> 20} MiB)",
                    data={"path": str(btf)})
    else:
        yield Check("btf", Status.WARN, "no /sys/kernel/btf/vmlinux", data={"path": None},
                    fix="a kernel with CONFIG_DEBUG_INFO_BTF (bcc then needs full headers)")

    tfs = tracefs()
    if tfs is None:
        yield Check("tracefs", Status.FAIL, "tracefs not mounted", data={},
                    fix="mount -t tracefs nodev /sys/kernel/tracing")
    kprobes = tfs is not None and (tfs / "kprobe_events").exists()
    if kprobes:
        yield Check("kprobes", Status.PASS, f"{tfs}/kprobe_events", data={"kprobes": True})
    else:
        why = ("kernel built without CONFIG_KPROBES"
               if kconfig.value("CONFIG_KPROBES") == "n" else "no kprobe_events in tracefs")
        yield Check("kprobes", Status.WARN, f"{why}: no ib_umem_get/migration kprobes",
                    data={"kprobes": False},
                    fix="tracepoint-only tracing works; for pin/unpin and per-folio "
                        "migration failures run in the VM: ci/vm/run -- rdmapin trace")

    if tfs is not None:
        missing = [t for t in TRACEPOINTS if not (tfs / "events" / t).is_dir()]
        data = {"wanted": list(TRACEPOINTS), "missing": missing}
        if missing:
            yield Check("tracepoints", Status.WARN,
                        f"{len(TRACEPOINTS) - len(missing)}/{len(TRACEPOINTS)} present; "
                        f"missing {', '.join(m.split('/')[1] for m in missing)}",
                        data=data, fix="a kernel with CONFIG_COMPACTION, CONFIG_MIGRATION and "
                                       "CONFIG_TRANSPARENT_HUGEPAGE")
        else:
            yield Check("tracepoints", Status.PASS,
                        f"all {len(TRACEPOINTS)} (compaction, migrate, page_isolation, "
                        "huge_memory)", data=data)

    try:
        import bcc
        version = getattr(bcc, "__version__", "?")
        yield Check("bcc", Status.PASS, f"bcc {version} importable", data={"version": version})
    except ImportError as e:
        yield Check("bcc", Status.FAIL, f"bcc not importable: {e}", data={"version": None},
                    fix="apt-get install python3-bpfcc (and make the venv see system "
                        "site-packages)")

    release = os.uname().release
    build = Path(f"/lib/modules/{release}/build")
    env = os.environ.get("BCC_KERNEL_SOURCE")
    kheaders = Path("/sys/kernel/kheaders.tar.xz")
    if (build / "include" / "generated" / "autoconf.h").exists():
        yield Check("headers", Status.PASS, str(build), data={"path": str(build)})
    elif env:
        yield Check("headers", Status.PASS, f"BCC_KERNEL_SOURCE={env}", data={"path": env})
    elif kheaders.exists():
        yield Check("headers", Status.PASS, f"{kheaders} (CONFIG_IKHEADERS)",
                    data={"path": str(kheaders)})
    else:
        yield Check("headers", Status.FAIL, f"no kernel headers for {release}",
                    data={"path": None},
                    fix=f"apt-get install linux-headers-{release}, or modprobe kheaders; "
                        "or trace in the VM: ci/vm/run -- rdmapin trace")
