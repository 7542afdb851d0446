"""The kernel-file readers fed generated and mutated text: a result, or a KernelFormatError
naming the file and the line; never an IndexError or ValueError from inside a parser. The
seeds are this machine's own files (and the guest's `rdma resource` JSON), mutated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rdmapin.errors import KernelFormatError
from rdmapin.kernel import maps, mmzone, procfs, rdma_res, tracefs

pytestmark = pytest.mark.pure

SAMPLE_MR = ('[{"ifindex":0,"ifname":"rxe0","mrn":0,"rkey":"2b1","lkey":"2b1","mrlen":1048576,'
             '"pdn":1,"pid":333,"comm":"python"}]')
FORMAT = (  # compaction:mm_compaction_end as 6.1 prints it, cut short
    "name: mm_compaction_end\nID: 610\nformat:\n"
    "\tfield:unsigned long zone_start;\toffset:8;\tsize:8;\tsigned:0;\n"
    "\tfield:int status;\toffset:48;\tsize:4;\tsigned:1;\n\n"
    'print fmt: "zone_start=0x%lx status=%s", REC->zone_start, '
    '__print_symbolic(REC->status, { 1, "continue" }, { 2, "skipped" })\n')


def _seed(path: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError:
        return ""
    # The first whole lines up to 4000 characters: a cut line would be a broken seed.
    return text if len(text) <= 4000 else text[:4000].rsplit("\n", 1)[0] + "\n"


READERS = {
    "smaps": (lambda t: maps.parse(t, "/proc/self/smaps"), _seed("/proc/self/smaps")),
    "status": (lambda t: procfs.parse_status(t, "/proc/self/status"), _seed("/proc/self/status")),
    "vmstat": (procfs.parse_vmstat, _seed("/proc/vmstat")),
    "meminfo": (procfs.parse_meminfo, _seed("/proc/meminfo")),
    "stat": (procfs.parse_stat, _seed("/proc/self/stat")),
    "limits": (procfs.parse_limits, _seed("/proc/self/limits")),
    "zoneinfo": (mmzone.zoneinfo, _seed("/proc/zoneinfo")),
    "buddyinfo": (mmzone.buddyinfo, _seed("/proc/buddyinfo")),
    "iomem": (mmzone.system_ram,
              "00001000-0009ffff : System RAM\n00100000-bffdffff : System RAM\n"),
    "format": (tracefs.parse_format, FORMAT),
    "rdma": (rdma_res.parse, SAMPLE_MR),
}

# Mutations a hostile or unknown kernel could produce: a line dropped, doubled, cut, a field
# replaced by junk, bytes flipped, separators removed.
JUNK = st.sampled_from(["", ":", "-", " kB", "0x", "nan", "1e999", "-1", "9" * 40, "\x00",
                        "\u202e", "é", "[", "{", "}", '"', "Node", "zone", "System RAM"])


@st.composite
def mutated(draw: st.DrawFn, seed: str) -> str:
    text_lines = seed.splitlines() or [""]
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(text_lines) - 1))
        op = draw(st.sampled_from(["drop", "double", "cut", "junk", "swap", "strip"]))
        line = text_lines[i]
        if op == "drop" and len(text_lines) > 1:
            text_lines.pop(i)
        elif op == "double":
            text_lines.insert(i, line)
        elif op == "cut":
            text_lines[i] = line[:draw(st.integers(0, max(len(line), 0)))]
        elif op == "junk":
            words = line.split() or [""]
            words[draw(st.integers(0, len(words) - 1))] = draw(JUNK)
            text_lines[i] = " ".join(words)
        elif op == "swap" and line:
            j = draw(st.integers(0, len(line) - 1))
            text_lines[i] = line[:j] + draw(st.characters()) + line[j + 1:]
        elif op == "strip":
            text_lines[i] = line.replace(":", "").replace(" ", "")
    return "\n".join(text_lines)


def _check(name: str, text: str) -> None:
    fn, _seed_text = READERS[name]
    try:
        fn(text)
    except KernelFormatError as e:
        assert e.path and e.lineno >= 1
        assert f":{e.lineno}: cannot parse" in str(e)


@pytest.mark.parametrize("name", sorted(READERS))
def test_the_seed_itself_parses(name):
    fn, seed = READERS[name]
    if seed:
        fn(seed)


@pytest.mark.parametrize("name", sorted(READERS))
@settings(max_examples=120)
@given(data=st.data())
def test_mutated_kernel_text_gives_a_result_or_a_named_format_error(name, data):
    _check(name, data.draw(mutated(READERS[name][1])))


@pytest.mark.parametrize("name", sorted(READERS))
@settings(max_examples=60)
@given(text=st.text(max_size=200))
@example(text="Node 0, zone DMA\n  pages free x\n")
@example(text='[{"mrlen": 1e999}]')
@example(text="VmPin: x kB")
def test_any_text_gives_a_result_or_a_named_format_error(name, text):
    _check(name, text)


def test_a_broken_line_is_named_with_file_and_line():
    with pytest.raises(KernelFormatError, match=r"^/proc/vmstat:2: cannot parse 'pgfault x'"):
        procfs.parse_vmstat("nr_free_pages 1\npgfault x\n")
    with pytest.raises(KernelFormatError, match=r"rdma -j -d res show mr:1: cannot parse"):
        rdma_res.parse('[{"mrlen": "big"}]')
    assert json.loads(SAMPLE_MR)[0]["mrlen"] == rdma_res.parse(SAMPLE_MR)[0].length
