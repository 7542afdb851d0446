"""pagemap and kpageflags readers against the kernel's files, read the plain way."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pagebufs import MADV_NOHUGEPAGE, PAGE, Buffer

from rdmapin.errors import RdmapinError, RdmapinOSError
from rdmapin.kernel import kpageflags as kpf
from rdmapin.kernel import pagemap
from rdmapin.kernel.kpageflags import KPF

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="PFNs and page flags need root")


def _plain_entry(path: str, index: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return int.from_bytes(os.pread(fd, 8, index * 8), "little")
    finally:
        os.close(fd)


def test_touched_pages_present_untouched_not():
    with Buffer(64 * PAGE, advice=MADV_NOHUGEPAGE) as buf:
        buf.view[: 32 * PAGE: PAGE] = 1
        e = pagemap.read("self", buf.addr, buf.length)
        assert len(e) == 64
        assert pagemap.present(e).tolist() == [True] * 32 + [False] * 32
        assert pagemap.exclusive(e)[:32].all()
        assert not pagemap.file_or_shared(e).any()
        assert not pagemap.swapped(e).any()
        p = pagemap.pfns(e)
        assert (p[:32] > 0).all() and (p[32:] == 0).all()
        for i in range(64):  # the reference: one plain 8-byte read per page
            assert int(e[i]) == _plain_entry("/proc/self/pagemap", buf.addr // PAGE + i)


def test_kpageflags_match_plain_reads_and_order():
    with Buffer(256 * PAGE, advice=MADV_NOHUGEPAGE) as buf:
        buf.touch()
        p = pagemap.pfns(pagemap.read(os.getpid(), buf.addr, buf.length))
        shuffled = np.random.default_rng(1).permutation(np.concatenate([p, p[:10]]))
        flags = kpf.read(shuffled)
        ksm = 1 << KPF.KSM if kpf.ksm_bit_on_every_anon_page() else 0
        for pfn, f in zip(shuffled.tolist(), flags.tolist(), strict=True):
            assert f == _plain_entry("/proc/kpageflags", pfn) & ~ksm
        own = kpf.read(p)
        assert kpf.bit(own, KPF.ANON).all()
        assert not kpf.bit(own, KPF.THP).any()
        assert "ANON" in kpf.names(int(own[0]))


def test_ksm_quirk_is_probed_from_the_kernels_own_flags():
    """6.10+'s stable_page_flags() sets KPF_KSM on every anonymous page (its test of
    PAGE_MAPPING_KSM is true for any anon mapping); Debian's 6.12.118 has it, 6.1 and 6.18
    do not. The probe's answer is what a plain read of a never-merged page says, and the
    reader never reports KSM for such a page either way."""
    with Buffer(16 * PAGE, advice=MADV_NOHUGEPAGE) as buf:
        buf.touch()
        p = pagemap.pfns(pagemap.read("self", buf.addr, buf.length))
        raw = [_plain_entry("/proc/kpageflags", int(x)) for x in p]
        assert all(r >> KPF.ANON & 1 for r in raw)
        raw_ksm = {bool(r >> KPF.KSM & 1) for r in raw}
        assert raw_ksm == {kpf.ksm_bit_on_every_anon_page()}
        assert not kpf.bit(kpf.read(p), KPF.KSM).any()
        assert not kpf.bit(kpf.read_range(int(p[0]), 1), KPF.KSM).any()


def test_unaligned_range_covers_partial_pages():
    with Buffer(4 * PAGE) as buf:
        buf.touch()
        assert len(pagemap.read("self", buf.addr + 100, PAGE)) == 2
        assert len(pagemap.read("self", buf.addr, PAGE)) == 1


def test_bad_flow_range_and_pid():
    with pytest.raises(RdmapinError, match="length must be > 0"):
        pagemap.read("self", 0x1000, 0)
    with pytest.raises(RdmapinOSError, match="pagemap"):
        pagemap.read(2**22 + 12345, 0x1000, 4096)


def test_pinned_pfns_read_migration_entries_as_the_page_they_name():
    """Synthetic entries (the bit layout of task_mmu.c): present -> its PFN, a swap entry
    (type | pfn << 5, as a migration entry of a pinned page reads) -> that PFN, none -> 0;
    plain ``pfns`` gives 0 for the swap entry."""
    present = pagemap.PRESENT | np.uint64(0x1234)
    migrating = pagemap.SWAPPED | np.uint64(29) | (np.uint64(0x5678) << np.uint64(5))
    e = np.array([present, migrating, 0], dtype=np.uint64)
    assert pagemap.pinned_pfns(e).tolist() == [0x1234, 0x5678, 0]
    assert pagemap.pfns(e).tolist() == [0x1234, 0, 0]
