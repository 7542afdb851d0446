"""Feature probing reads the kernel's own descriptions: tracepoint fields, print-fmt enum
tables, and struct layouts from BTF. Pure parsing is checked on synthetic input; the rest
on this machine's tracefs and BTF."""

from __future__ import annotations

import re
import struct

import pytest
from needs import need_host_tracing

from rdmapin.kernel import btf, tracefs
from rdmapin.trace import features

SAMPLE_61 = """name: mm_migrate_pages
ID: 512
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned long succeeded;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long failed;\toffset:16;\tsize:8;\tsigned:0;
\tfield:enum migrate_mode mode;\toffset:48;\tsize:4;\tsigned:0;
\tfield:int reason;\toffset:52;\tsize:4;\tsigned:1;

print fmt: "nr_succeeded=%lu mode=%s reason=%s", REC->succeeded, __print_symbolic(REC->mode, \
{0, "MIGRATE_ASYNC"}, {1, "MIGRATE_SYNC_LIGHT"}), __print_symbolic(REC->reason, {0, \
"compaction"}, {2, "memory_hotplug"}, {7, "longterm_pin"})
"""


def test_parse_format_fields_and_symbolic_tables():
    fmt = tracefs.parse_format(SAMPLE_61)
    assert fmt.fields["succeeded"] == "unsigned long"
    assert fmt.fields["mode"] == "enum migrate_mode"
    assert "large_folio_split" not in fmt.fields
    assert fmt.symbols["reason"] == {0: "compaction", 2: "memory_hotplug", 7: "longterm_pin"}
    assert fmt.symbols["mode"] == {0: "MIGRATE_ASYNC", 1: "MIGRATE_SYNC_LIGHT"}


def test_probe_reads_this_kernels_enum_names_from_format_files():
    need_host_tracing()
    feat = features.probe()
    text = (feat.tracefs / "events/migrate/mm_migrate_pages/format").read_text()
    pairs = dict(re.findall(r'\{(\d+), "(\w+)"\}', text.partition("REC->reason,")[2]))
    assert feat.migrate_reasons == {int(k): v for k, v in pairs.items()}
    assert "longterm_pin" in feat.migrate_reasons.values()
    line = feat.unavailable_line()
    if line is not None:
        assert "\n" not in line and line.startswith("unavailable: ")
    if not (feat.tracefs / "kprobe_events").exists():
        assert feat.missing["folio_fail"] == "kernel without kprobes"
        assert "umem" in feat.missing


def _btf_blob() -> bytes:
    """struct s { int a; union { int b; struct { int c; long d; }; }; }; enum e { X = 6 };"""
    strings = b"\0int\0long\0s\0a\0b\0c\0d\0e\0X\0"
    off = {n: strings.index(n.encode() + b"\0") for n in ("int", "long", "s", "a", "b", "c",
                                                          "d", "e", "X")}
    types = b""
    types += struct.pack("<III", off["int"], 1 << 24, 4) + struct.pack("<I", 32)     # 1 int
    types += struct.pack("<III", off["long"], 1 << 24, 8) + struct.pack("<I", 64)    # 2 long
    types += struct.pack("<III", 0, (4 << 24) | 2, 16)                               # 3 anon st
    types += struct.pack("<III", off["c"], 1, 0) + struct.pack("<III", off["d"], 2, 64)
    types += struct.pack("<III", 0, (5 << 24) | 2, 16)                               # 4 anon un
    types += struct.pack("<III", off["b"], 1, 0) + struct.pack("<III", 0, 3, 0)
    types += struct.pack("<III", off["s"], (4 << 24) | 2, 24)                        # 5 struct s
    types += struct.pack("<III", off["a"], 1, 0) + struct.pack("<III", 0, 4, 64)
    types += struct.pack("<III", off["e"], (6 << 24) | 1, 4)                         # 6 enum
    types += struct.pack("<Ii", off["X"], 6)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_btf_offsets_look_through_anonymous_members():
    b = btf.Btf(_btf_blob(), structs=("s",), enums=("X",))
    assert b.offsetof("s", "a") == 0
    assert b.offsetof("s", "b") == 8
    assert b.offsetof("s", "c") == 8
    assert b.offsetof("s", "d") == 16
    assert b.offsetof("s", "nope") is None
    assert b.sizeof("s") == 24
    assert b.enums["X"] == 6


def test_split_btf_reads_its_own_types_and_its_bases():
    """A module's BTF continues vmlinux's type ids and string offsets: struct m (the
    module's) holds a struct s (the base's) and is looked up like any; s is found too."""
    base_blob = _btf_blob()
    base = btf.Btf(base_blob, structs=(), enums=())
    base_strings = struct.unpack_from("<I", base_blob, 20)[0]  # str_len: where ours start
    strings = b"\0m\0y\0x\0"
    off = {n: base_strings + strings.index(n.encode() + b"\0") for n in ("m", "x", "y")}
    # 7 struct m { struct s x; int y; } (ids 1..6 are the base's: 1 int, 5 struct s)
    types = struct.pack("<III", off["m"], (4 << 24) | 2, 32)
    types += struct.pack("<III", off["x"], 5, 0) + struct.pack("<III", off["y"], 1, 24 * 8)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    m = btf.Btf(hdr + types + strings, structs=("m", "s"), enums=("X",), funcs=(), base=base)
    assert m.structs == {"s": 5, "m": 7}
    assert (m.sizeof("m"), m.offsetof("m", "y"), m.offsetof("m", "x")) == (32, 24, 0)
    assert m.offsetof("s", "d") == 16 and m.enums == {"X": 6}


def test_btf_of_this_kernel_has_the_fields_the_folio_probe_reads():
    b = btf.vmlinux()
    if b is None:
        pytest.skip("kernel without BTF")
    size = b.sizeof("page")
    ref = b.offsetof("page", "_refcount")
    assert size and ref is not None and 0 < ref < size
    assert b.offsetof("page", "_mapcount") is not None
    assert "PG_head" in b.enums
    assert (b.offsetof("folio", "_folio_order") or b.offsetof("folio", "_flags_1")) is not None


RACE = """
import threading
from rdmapin.trace import features
start = threading.Barrier(4)
def ask():
    start.wait()
    features._trampolines()
threads = [threading.Thread(target=ask) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_threads_asking_for_trampolines_at_once_do_not_crash_bcc():
    """bcc fills its kernel symbol cache lazily and without a lock: 4 threads calling
    BPF.support_kfunc() at once crashed 10 of 20 processes here (SIGSEGV/SIGABRT), as the
    exporter's tracer start and doctor scan did in CI. rdmapin asks under BCC_LOCK."""
    pytest.importorskip("bcc")
    import subprocess
    import sys

    for _ in range(10):
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", RACE],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"exit {r.returncode}:\n{r.stderr[-3000:]}"
