"""The ib_umem_find_best_pgsz rule on synthetic PFN layouts, against answers worked by hand.

Notation: VA and PA in bytes; a run is a physically contiguous extent in virtual order.
"""

from __future__ import annotations

import numpy as np
import pytest

from rdmapin.pages.descriptors import (
    describe,
    find_best_pgsz,
    layout_mask,
    num_dma_blocks,
    num_pages,
)

K, M, G = 1 << 10, 1 << 20, 1 << 30
P4K, P64K, P2M, P1G = 4 * K, 64 * K, 2 * M, 1 * G
ALL = P4K | P64K | P2M | P1G


def run(first_pa: int, nbytes: int) -> np.ndarray:
    return np.arange(first_pa // P4K, (first_pa + nbytes) // P4K, dtype=np.uint64)


def test_aligned_run_allows_2m_not_1g():
    # VA 2M, PA 4M, 4 MiB contiguous: VA^PA = 0x600000 -> lowest set bit 2M.
    va, pfns = 2 * M, run(4 * M, 4 * M)
    assert layout_mask(va, pfns) == 0x600000
    assert find_best_pgsz(va, 4 * M, pfns, ALL) == P2M
    d = describe(va, 4 * M, pfns, folios=2)
    got = {c.page_size: (c.usable, c.blocks) for c in d.per_size}
    assert got == {P4K: (True, 1024), P64K: (True, 64), P2M: (True, 2), P1G: (False, None)}
    assert (d.best_page_size, d.best_blocks, d.rxe_blocks, d.struct_pages) == (P2M, 2, 1024, 1024)


def test_pa_offset_by_one_page_forces_4k():
    # PA starts 4K past a 2M boundary while VA is 2M aligned: bit 12 differs.
    va, pfns = 2 * M, run(4 * M + P4K, 4 * M)
    assert find_best_pgsz(va, 4 * M, pfns, ALL) == P4K
    assert find_best_pgsz(va, 4 * M, pfns, P2M) == 0  # a 2M-only device cannot register it
    assert describe(va, 4 * M, pfns, folios=1024).best_blocks == 1024


def test_split_runs_each_2m_aligned():
    # Two 2M runs far apart, both PA 2M aligned; the break is at VA 4M (2M aligned).
    va = 2 * M
    pfns = np.concatenate([run(16 * M, 2 * M), run(48 * M, 2 * M)])
    assert find_best_pgsz(va, 4 * M, pfns, ALL) == P2M
    assert describe(va, 4 * M, pfns, folios=2).best_blocks == 2


def test_split_at_unaligned_va_limits_to_512k():
    # Runs of 1.5M and 2.5M: the break at VA 2M+1.5M = 0x380000 has lowest bit 512K.
    va = 2 * M
    pfns = np.concatenate([run(16 * M, 1536 * K), run(64 * M, 2560 * K)])
    assert layout_mask(va, pfns) & -layout_mask(va, pfns) == 512 * K
    assert find_best_pgsz(va, 4 * M, pfns, ALL) == P64K
    d = describe(va, 4 * M, pfns, folios=2)
    got = {c.page_size: c.blocks for c in d.per_size}
    assert got == {P4K: 1024, P64K: 64, P2M: None, P1G: None}


def test_contiguous_across_many_pages_is_one_extent():
    # 1 GiB, VA and PA both 1G aligned, no break: 1G pages fit, one block.
    va, pfns = 3 * G, run(5 * G, 1 * G)
    assert find_best_pgsz(va, G, pfns, ALL) == P1G
    assert describe(va, G, pfns, folios=1).best_blocks == 1


def test_span_term_picks_smallest_page_covering_the_region():
    # 8K at VA 2M, PA 2M aligned: layout allows anything, but the kernel's first mask term
    # (bitmap sizes >= the bits that change across the span) stops at the smallest size
    # covering [va, va+len): with {4K, 2M, 1G}, 2M covers it in one block.
    va, pfns = 2 * M, run(6 * M, 8 * K)
    assert layout_mask(va, pfns) == (6 * M) ^ (2 * M)  # 4M: allows up to 4M
    assert find_best_pgsz(va, 8 * K, pfns, P4K | P2M | P1G) == P2M
    assert find_best_pgsz(va, 8 * K, pfns, P4K | P64K | P2M | P1G) == P64K


def test_offset_into_first_page():
    # addr 0x200100, 4K long: spans two base pages; pgoff is carried in the first extent.
    addr = 2 * M + 0x100
    pfns = run(8 * M, 8 * K)
    assert num_pages(addr, P4K) == 2
    assert find_best_pgsz(addr, P4K, pfns, ALL) == P64K  # 8K span -> smallest cover 64K
    assert num_dma_blocks(addr, P4K, P64K) == 1
    shifted = run(8 * M + P4K, 8 * K)  # PA page offset differs from VA: 4K only
    assert find_best_pgsz(addr, P4K, shifted, ALL) == P4K


def test_num_dma_blocks_by_hand():
    assert num_dma_blocks(0x1000, 2 * M, P2M) == 2
    assert num_dma_blocks(0, 2 * M, P2M) == 1
    assert num_dma_blocks(0x1000, 0x1000, P4K) == 1
    assert num_dma_blocks(0xfff, 2, P4K) == 2


@pytest.mark.parametrize("bitmap", [0, P4K >> 1])
def test_bad_flow_bitmap_without_page_size(bitmap):
    assert find_best_pgsz(2 * M, 4 * M, run(4 * M, 4 * M), bitmap) == 0
