"""What this kernel offers the tracer, probed at start: tracepoints and their fields, enum
names from the format files' ``print fmt``, kprobe-able functions, headers for bcc, the ring
buffer, and the struct page layout from BTF.

Nothing here is decided by kernel version. 6.1 and 6.18 differ (``large_folio_split`` in
``mm_migrate_pages``, ``damon`` as a migrate reason, the folio order's home), and the
differences are read from the kernel itself.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from rdmapin.kernel import btf as _btf
from rdmapin.kernel import kallsyms
from rdmapin.kernel.tracefs import (
    MOUNT_TRACEFS,
    TracepointFormat,
    available_functions,
    read_format,
    tracefs,
)

TOP = Path(__file__).resolve().parents[2]

# (probe name, tracepoint "category:event", -D define when present, required field names)
TRACEPOINTS = (
    ("migrate", "migrate:mm_migrate_pages", None, ("succeeded", "failed", "reason")),
    ("migrate_start", "migrate:mm_migrate_pages_start", "HAVE_MIGRATE_START", ("reason",)),
    ("compaction", "compaction:mm_compaction_isolate_migratepages", None,
     ("start_pfn", "end_pfn", "nr_scanned", "nr_taken")),
    ("compaction_fast_free", "compaction:mm_compaction_fast_isolate_freepages",
     "HAVE_FAST_ISOLATE_FREEPAGES", ("nr_scanned", "nr_taken")),
    ("compaction_finished", "compaction:mm_compaction_finished", "HAVE_COMPACTION_FINISHED",
     ("ret",)),
    ("compaction_deferred", "compaction:mm_compaction_deferred", "HAVE_COMPACTION_DEFERRED",
     ("considered",)),
    ("isolation", "page_isolation:test_pages_isolated", None, ("fin_pfn",)),
    ("collapse", "huge_memory:mm_collapse_huge_page", None, ("status",)),
    ("filemap", "filemap:mm_filemap_delete_from_page_cache", None,
     ("pfn", "i_ino", "index", "s_dev")),
)
# The compaction file needs all of these; they came together in the kernel.
COMPACTION_CORE = ("mm_compaction_begin", "mm_compaction_end",
                   "mm_compaction_isolate_migratepages", "mm_compaction_isolate_freepages",
                   "mm_compaction_migratepages")

# (probe name, kernel function, -D define, bpf function, is return probe)
KPROBES = (
    ("folio_fail", "move_to_new_folio", "HAVE_MOVE_TO_NEW_FOLIO",
     (("rp_move_to_new_folio", False), ("rp_move_to_new_folio_ret", True))),
    ("folio_unmap", "try_to_migrate_one", "HAVE_TRY_TO_MIGRATE_ONE",
     (("rp_try_to_migrate_one", False), ("rp_try_to_migrate_one_ret", True))),
    ("umem", "ib_umem_get", "HAVE_UMEM",
     (("rp_umem_get", False), ("rp_umem_get_ret", True))),
    ("umem_release", "ib_umem_release", "HAVE_UMEM", (("rp_umem_release", False),)),
    ("mr_keys", "rdma_restrack_add", "HAVE_MR_KEYS", (("rp_mr_keys", False),)),
    ("pin_user", "pin_user_pages", "HAVE_PIN_USER",
     (("rp_pin_user", False), ("rp_pin_ret", True))),
    ("pin_fast", "pin_user_pages_fast", "HAVE_PIN_FAST",
     (("rp_pin_fast", False), ("rp_pin_ret", True))),
    ("pin_remote", "pin_user_pages_remote", "HAVE_PIN_REMOTE",
     (("rp_pin_remote", False), ("rp_pin_ret", True))),
    ("writeback", "__folio_start_writeback", "HAVE_WRITEBACK",
     (("rp_folio_start_writeback", False),)),
)
# The MR's keys at registration (bpf/mrkeys.c): read from the struct ib_mr the RDMA core adds
# to its resource tracking, laid out as ib_core's BTF says (split over vmlinux's).
MR_STRUCTS = ("ib_mr", "ib_device", "rdma_restrack_entry")
MR_MODULE = "ib_core"
# Long-term pins outside RDMA: io_uring's fixed buffers (pin_user_pages on 6.1), VFIO
# (pin_user_pages_remote), drivers (pin_user_pages_fast).
PIN_PROBES = ("pin_user", "pin_fast", "pin_remote")

# The per-folio failure probes (bpf/migrate.c), one for each step that refuses a pinned
# folio: try_to_migrate_one cannot unmap a pinned private anonymous page, so the attempt
# never reaches move_to_new_folio, which refuses the pinned pages that were unmapped (shmem,
# page cache). Each is an fexit program where BPF trampolines and BTF allow (probe -> -D).
FOLIO_PROBES = {"folio_fail": "HAVE_FEXIT_MOVE_TO_NEW_FOLIO",
                "folio_unmap": "HAVE_FEXIT_TRY_TO_MIGRATE_ONE"}


def unavailable_line(missing: Mapping[str, str]) -> str | None:
    """``probe -> why`` as one line, probes grouped by reason; None when nothing is missing."""
    if not missing:
        return None
    by_why: dict[str, list[str]] = {}
    for probe, why in missing.items():
        by_why.setdefault(why, []).append(probe)
    parts = [f"{', '.join(sorted(p))} ({why})" for why, p in sorted(by_why.items())]
    return "unavailable: " + "; ".join(parts)


class _Queries:
    """What both the probe's draft and its frozen result answer."""

    formats: Mapping[str, TracepointFormat]
    available: Mapping[str, str]
    missing: Mapping[str, str]

    def enum(self, tracepoint: str, fld: str) -> dict[int, str]:
        fmt = self.formats.get(tracepoint)
        return dict(fmt.symbols.get(fld, {})) if fmt else {}

    @property
    def migrate_reasons(self) -> dict[int, str]:
        return self.enum("migrate:mm_migrate_pages", "reason")

    @property
    def compaction_status(self) -> dict[int, str]:
        return self.enum("compaction:mm_compaction_end", "status")

    @property
    def collapse_status(self) -> dict[int, str]:
        return self.enum("huge_memory:mm_collapse_huge_page", "status")

    def has(self, probe: str) -> bool:
        return probe in self.available

    def unavailable_line(self) -> str | None:
        """The one line a run prints about what it cannot watch here, or None."""
        return unavailable_line(self.missing)


@dataclass
class _Draft(_Queries):
    """The probe's working state; frozen into Features before anyone else sees it."""

    tracefs: Path | None
    formats: dict[str, TracepointFormat] = field(default_factory=dict)
    available: dict[str, str] = field(default_factory=dict)  # probe -> what it attaches to
    missing: dict[str, str] = field(default_factory=dict)    # probe -> why not
    defines: dict[str, str | None] = field(default_factory=dict)
    headers: str = "none"  # "running", "kheaders", "stand-in <dir>", "none"
    header_cflags: list[str] = field(default_factory=list)
    header_env: dict[str, str] = field(default_factory=dict)
    ringbuf: bool = False

    def freeze(self) -> Features:
        return Features(
            tracefs=self.tracefs, formats=MappingProxyType(dict(self.formats)),
            available=MappingProxyType(dict(self.available)),
            missing=MappingProxyType(dict(self.missing)),
            defines=MappingProxyType(dict(self.defines)), headers=self.headers,
            header_cflags=tuple(self.header_cflags),
            header_env=MappingProxyType(dict(self.header_env)), ringbuf=self.ringbuf)


@dataclass(frozen=True)
class Features(_Queries):
    """The probes this kernel allows, why the others are missing, and the build parameters:
    what probe() saw, frozen. What only a load can learn (a kprobe the kernel refuses) is
    the loaded Program's, never written back here."""

    tracefs: Path | None
    formats: Mapping[str, TracepointFormat]
    available: Mapping[str, str]   # probe -> what it attaches to
    missing: Mapping[str, str]     # probe -> why not
    defines: Mapping[str, str | None]
    headers: str                   # "running", "kheaders", "stand-in <dir>", "none"
    header_cflags: tuple[str, ...]
    header_env: Mapping[str, str]
    ringbuf: bool

    def but(self, *, defines: Mapping[str, str | None] | None = None,
            available: Mapping[str, str] | None = None) -> Features:
        """A copy with more defines or probes (the host test compiles every probe)."""
        return replace(self,
                       defines=MappingProxyType({**self.defines, **(defines or {})}),
                       available=MappingProxyType({**self.available, **(available or {})}))


def _headers(feat: _Draft) -> None:
    """Find kernel headers for bcc: the running kernel's, kheaders, or a stand-in for the
    tracepoint subset (only types like ``enum migrate_mode``; field layouts come from the
    running kernel's format files, which bcc reads itself)."""
    rel = os.uname().release
    build = Path(f"/lib/modules/{rel}/build")
    if (build / "include" / "generated" / "autoconf.h").exists():
        feat.headers = "running"
        return
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        feat.headers = "kheaders"
        return
    roots = [Path(p) for p in os.environ.get("RDMAPIN_KERNEL_HEADERS", "").split(":") if p]
    roots += sorted((TOP / ".cache" / "kernel").glob("*/usr/src"))
    for root in roots:
        common = sorted(root.glob("linux-headers-*-common"))
        arch = [p for p in sorted(root.glob("linux-headers-*")) if p not in common]
        if common and arch and (arch[0] / "include" / "generated" / "autoconf.h").exists():
            a = arch[0]
            feat.headers = f"stand-in {a.name}"
            feat.header_env = {"BCC_KERNEL_SOURCE": str(common[0])}
            feat.header_cflags = [f"-I{a}/include", f"-I{a}/arch/x86/include/generated",
                                  f"-I{a}/arch/x86/include/generated/uapi",
                                  f"-I{a}/include/generated/uapi"]
            return
    feat.headers = "none"


def _foll_longterm(feat: _Draft) -> int | None:
    """FOLL_LONGTERM's value: an enum in BTF on newer kernels, a #define in mm.h on 6.1."""
    b = _btf.vmlinux()
    if b is not None and "FOLL_LONGTERM" in b.enums:
        return b.enums["FOLL_LONGTERM"]
    build = Path(f"/lib/modules/{os.uname().release}/build")
    for p in (build / "include/linux/mm.h", build / "include/linux/mm_types.h",
              build.parent / "source/include/linux/mm.h"):
        try:
            m = re.search(r"#define\s+FOLL_LONGTERM\s+(0x[0-9a-fA-F]+|\d+)", p.read_text())
        except OSError:
            continue
        if m:
            return int(m.group(1), 0)
    # Debian splits headers: build/ has generated files, the -common tree has include/linux
    for p in sorted(Path("/usr/src").glob("linux-headers-*-common/include/linux/mm.h")):
        if os.uname().release.rsplit("-", 1)[0] in str(p):
            m = re.search(r"#define\s+FOLL_LONGTERM\s+(0x[0-9a-fA-F]+|\d+)", p.read_text())
            if m:
                return int(m.group(1), 0)
    return None


# bcc's process-wide state (its kernel symbol cache, filled lazily without a lock; the
# environment its compiler reads headers from) is not thread-safe: every call into it that
# may touch that state holds this lock.
BCC_LOCK = threading.RLock()


@functools.cache
def _trampolines() -> bool:
    """BPF trampolines (fentry/fexit) exist here (asked once: bcc looks up a kernel symbol).

    bcc's kernel symbol cache is filled lazily and without a lock: two threads asking at
    once (the exporter's tracer start and its doctor scan) crashed the process with
    SIGSEGV in ``bcc_symcache_resolve_name``, so the one question is asked under BCC_LOCK."""
    try:
        from bcc import BPF
    except ImportError:
        return False
    with BCC_LOCK:
        return bool(BPF.support_kfunc())


def _fexit_ok(func: str) -> bool:
    """BPF trampolines exist here and BTF describes ``func``."""
    b = _btf.vmlinux()
    if b is None or func not in b.funcs:
        return False
    return _trampolines()


def _folio_layout(feat: _Draft) -> str | None:
    """-D values for reading a struct folio by offset; returns why not, or None."""
    b = _btf.vmlinux()
    if b is None:
        return "no BTF for struct page"
    size = b.sizeof("page")
    ref = b.offsetof("page", "_refcount")
    mapc = b.offsetof("page", "_mapcount")
    head = b.enums.get("PG_head")
    order = b.offsetof("folio", "_folio_order")  # 6.1: a byte of its own
    mask = 0xFF
    if order is None:
        order = b.offsetof("folio", "_flags_1")  # later: low byte of _flags_1
    if None in (size, ref, mapc, head, order):
        return "struct page/folio layout not in BTF"
    feat.defines.update({
        "RP_STRUCT_PAGE_SIZE": str(size), "RP_PAGE_REFCOUNT_OFF": str(ref),
        "RP_PAGE_MAPCOUNT_OFF": str(mapc), "RP_PG_HEAD": str(head),
        "RP_FOLIO_ORDER_OFF": str(order), "RP_FOLIO_ORDER_MASK": hex(mask),
    })
    pin = b.offsetof("folio", "_pincount")
    if pin is not None:
        feat.defines["RP_FOLIO_PINCOUNT_OFF"] = str(pin)
    syms = kallsyms.lookup(("vmemmap_base",))
    if "vmemmap_base" in syms:
        feat.defines["RP_VMEMMAP_BASE_PTR"] = hex(syms["vmemmap_base"])
    else:
        feat.defines["RP_VMEMMAP_START"] = "0xffffea0000000000UL"  # x86-64 without KASLR
    return None


def _file_layout(feat: _Draft) -> str | None:
    """-D values for naming the file of a folio (bpf/writeback.c: folio->mapping->host's
    i_ino and i_sb->s_dev, folio->index) and its PG_writeback bit; returns why not, or None."""
    b = _btf.vmlinux()
    if b is None:
        return "no BTF for struct folio"
    values = {
        "RP_PG_WRITEBACK": b.enums.get("PG_writeback"),
        "RP_FOLIO_MAPPING_OFF": b.offsetof("folio", "mapping"),
        "RP_FOLIO_INDEX_OFF": b.offsetof("folio", "index"),
        "RP_MAPPING_HOST_OFF": b.offsetof("address_space", "host"),
        "RP_INODE_INO_OFF": b.offsetof("inode", "i_ino"),
        "RP_INODE_SB_OFF": b.offsetof("inode", "i_sb"),
        "RP_SB_DEV_OFF": b.offsetof("super_block", "s_dev"),
    }
    if None in values.values():
        lacking = ", ".join(k for k, v in values.items() if v is None)
        return f"folio/inode layout not in BTF ({lacking})"
    feat.defines.update({k: str(v) for k, v in values.items()})
    return None


def _mr_layout(feat: _Draft) -> str | None:
    """-D values for reading the struct ib_mr around a restrack entry; returns why not, or
    None. Without them the tracer asks the kernel's MR list for keys (netlink), which a
    short-lived MR of another process can leave before the answer comes."""
    b = _btf.module(MR_MODULE, MR_STRUCTS, ("RDMA_RESTRACK_MR",))
    if b is None:
        return f"no BTF for {MR_MODULE} (struct ib_mr)"
    offsets = {
        "RP_MR_RES_OFF": b.offsetof("ib_mr", "res"),
        "RP_MR_LKEY_OFF": b.offsetof("ib_mr", "lkey"),
        "RP_MR_RKEY_OFF": b.offsetof("ib_mr", "rkey"),
        "RP_MR_LENGTH_OFF": b.offsetof("ib_mr", "length"),
        "RP_MR_DEVICE_OFF": b.offsetof("ib_mr", "device"),
        "RP_IBDEV_NAME_OFF": b.offsetof("ib_device", "name"),
        "RP_RES_TYPE_OFF": b.offsetof("rdma_restrack_entry", "type"),
        "RP_RESTRACK_MR": b.enums.get("RDMA_RESTRACK_MR"),
    }
    if None in offsets.values():
        lacking = ", ".join(k for k, v in offsets.items() if v is None)
        return f"struct ib_mr layout not in BTF ({lacking})"
    feat.defines.update({k: str(v) for k, v in offsets.items()})
    return None


def probe() -> Features:
    """Look at the running kernel, once; never raises for a missing capability. The result
    is frozen: a plan (rdmapin.trace.loader.plan) is made from it, never edits to it."""
    root = tracefs()
    feat = _Draft(tracefs=root)
    _headers(feat)
    if root is None:
        if os.geteuid() != 0:
            feat.missing["all"] = "tracing needs root (tracefs is not readable)"
        else:
            feat.missing["all"] = f"tracefs not mounted ({MOUNT_TRACEFS})"
        return feat.freeze()
    for name, tp, define, needed in TRACEPOINTS:
        fmt = read_format(root, tp)
        if fmt is None:
            feat.missing[name] = f"no tracepoint {tp}"
            continue
        feat.formats[tp] = fmt
        lacking = [f for f in needed if f not in fmt.fields]
        if lacking:
            feat.missing[name] = f"{tp} lacks {', '.join(lacking)}"
            continue
        feat.available[name] = tp
        if define:
            feat.defines[define] = None
    for ev in COMPACTION_CORE:
        fmt = read_format(root, f"compaction:{ev}")
        if fmt is None:
            feat.available.pop("compaction", None)
            feat.missing["compaction"] = f"no tracepoint compaction:{ev}"
            break
        feat.formats[f"compaction:{ev}"] = fmt
    fm = feat.formats.get("filemap:mm_filemap_delete_from_page_cache")
    if feat.has("filemap") and fm is not None and "order" in fm.fields:
        feat.defines["HAVE_FILEMAP_ORDER"] = None  # 6.1 has none: one page per event
    status = feat.collapse_status
    ok = [k for k, v in status.items() if v == "succeeded"]
    if ok:
        feat.defines["RP_COLLAPSE_SUCCEEDED"] = str(ok[0])

    kprobes_why = None
    if not (root / "kprobe_events").exists():
        kprobes_why = "kernel without kprobes"
    elif feat.headers != "running" and feat.headers != "kheaders":
        kprobes_why = "no headers for the running kernel"
    funcs = available_functions(root, {k[1] for k in KPROBES}) if kprobes_why is None else set()
    for name, func, define, _ in KPROBES:
        if kprobes_why:
            feat.missing[name] = kprobes_why
        elif func not in funcs:
            feat.missing[name] = (f"{func} not kprobe-able (module not loaded or inlined)"
                                  if func.startswith(("ib_umem", "rdma_")) else
                                  f"{func} not kprobe-able")
        else:
            feat.available[name] = func
            feat.defines[define] = None
    folio_probes = [n for n in FOLIO_PROBES if n in feat.available]
    # bpf/filemap.c reads the same layout to keep only maybe-pinned folios (else: all);
    # bpf/writeback.c needs it, and the file's, to find the folio's PFN and file
    why = (_folio_layout(feat) if folio_probes or feat.has("filemap") or feat.has("writeback")
           else None)
    if feat.has("writeback"):
        wb_why = why or _file_layout(feat)
        if wb_why:
            feat.available.pop("writeback")
            feat.defines.pop("HAVE_WRITEBACK", None)
            feat.missing["writeback"] = wb_why
    for name in folio_probes:
        func = feat.available[name]
        if why:
            feat.available.pop(name)
            feat.defines.pop(next(k[2] for k in KPROBES if k[0] == name), None)
            feat.missing[name] = why
        elif _fexit_ok(func):
            feat.defines[FOLIO_PROBES[name]] = None
    if feat.has("mr_keys"):
        why = None if feat.has("umem") else "needs ib_umem_get's probe (the MR's umem)"
        why = why or _mr_layout(feat)
        if why:
            feat.available.pop("mr_keys")
            feat.defines.pop("HAVE_MR_KEYS", None)
            feat.missing["mr_keys"] = why
    if feat.has("folio_unmap"):
        b = _btf.vmlinux()
        split = b.enums.get("TTU_SPLIT_HUGE_PMD") if b is not None else None
        if split is not None:  # else a THP split's unmap failure counts as an attempt too
            feat.defines["RP_TTU_SPLIT_HUGE_PMD"] = hex(split)
    if any(feat.has(p) for p in PIN_PROBES):
        foll = _foll_longterm(feat)
        if foll is None:
            for name in PIN_PROBES:
                if feat.available.pop(name, None):
                    feat.missing[name] = "FOLL_LONGTERM's value not found (BTF or mm.h)"
        else:
            feat.defines["RP_FOLL_LONGTERM"] = hex(foll)
    # BPF ring buffers arrived in 5.8; probe for the helper rather than the version.
    feat.ringbuf = bool(kallsyms.lookup(("bpf_ringbuf_output",)))
    if feat.headers == "none":
        for name in list(feat.available):
            feat.missing[name] = "no kernel headers for bcc"
        feat.available.clear()
    return feat.freeze()
