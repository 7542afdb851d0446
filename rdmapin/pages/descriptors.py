"""How many DMA blocks a device needs for a region, given where its pages really are.

The rule is the kernel's ``ib_umem_find_best_pgsz`` (drivers/infiniband/core/umem.c),
replicated on a PFN array: a device that maps an MR with one page size ``P`` needs every
physically contiguous extent to start and end on ``P`` boundaries in both the virtual (IOVA)
and the physical address space. Walking the extents, every address bit in which VA and PA
differ, and every VA at which physical contiguity breaks, is OR-ed into a mask; the number
of trailing zeros of that mask is the largest usable page size. Since the kernel change
"RDMA/umem: ... physically contiguous" (2025) extents are physically contiguous runs even
when the scatterlist split them; before it each scatterlist entry counted, which only
differs for runs longer than the device's max segment (rxe/mlx5: >= 2 GiB) — not modelled.
DMA addresses are taken to be physical (no IOMMU remapping; rxe uses kernel virtual
addresses, which differ from physical by a 1 GiB-aligned offset, so the answer is the same).

``ib_umem_num_dma_blocks`` then counts blocks from the IOVA span alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rdmapin.kernel.arch import PAGE_SHIFT, PAGE_SIZE

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
DEVICE_PAGE_SIZES = (4 * KIB, 64 * KIB, 2 * MIB, 1 * GIB)
# A device whose page_size_cap holds all four sizes (what a 2M/1G-capable NIC offers).
DEFAULT_PGSZ_BITMAP = sum(DEVICE_PAGE_SIZES)
_U64 = (1 << 64) - 1


def _genmask(high: int, low: int) -> int:
    return ((1 << (high + 1)) - 1) & ~((1 << low) - 1) & _U64


def _ctz(x: int) -> int:
    return (x & -x).bit_length() - 1


def layout_mask(addr: int, pfns: np.ndarray, iova: int | None = None) -> int:
    """The address bits that VA/PA disagreement and contiguity breaks forbid (no bitmap term).

    ``pfns`` holds the PFN of every base page of the region in virtual order, as pinning
    would see it; ``iova`` (default ``addr``) is the address the device is given. The
    first extent carries the region's offset into its first page.
    """
    if len(pfns) == 0:
        return 0
    virt = addr if iova is None else iova
    p = np.asarray(pfns, dtype=np.uint64)
    pgoff = addr & (PAGE_SIZE - 1)
    mask = ((int(p[0]) << PAGE_SHIFT) + pgoff) ^ virt
    breaks = np.flatnonzero(p[1:] != p[:-1] + np.uint64(1)) + 1
    if len(breaks):
        va = np.uint64((virt - pgoff) & _U64) + breaks.astype(np.uint64) * np.uint64(PAGE_SIZE)
        pa = p[breaks] << np.uint64(PAGE_SHIFT)
        mask |= int(np.bitwise_or.reduce(pa ^ va)) | int(np.bitwise_or.reduce(va))
    return mask & _U64


def find_best_pgsz(addr: int, length: int, pfns: np.ndarray, pgsz_bitmap: int,
                   iova: int | None = None, lmask: int | None = None) -> int:
    """``ib_umem_find_best_pgsz(umem, pgsz_bitmap, iova)``: the page size, or 0 if none fits.

    ``iova`` defaults to ``addr`` (what ibv_reg_mr passes); ``lmask`` is layout_mask's
    result when the caller has it already.
    """
    virt = addr if iova is None else iova
    pgsz_bitmap &= _genmask(63, PAGE_SHIFT)
    if not pgsz_bitmap:
        return 0
    span_bits = ((length - 1 + virt) ^ virt).bit_length()
    mask = pgsz_bitmap & _genmask(63, span_bits)
    mask |= layout_mask(addr, pfns, virt) if lmask is None else lmask
    if mask:
        pgsz_bitmap &= _genmask(_ctz(mask), 0)
    return 1 << (pgsz_bitmap.bit_length() - 1) if pgsz_bitmap else 0


def num_dma_blocks(iova: int, length: int, pgsz: int) -> int:
    """``ib_umem_num_dma_blocks``: blocks of ``pgsz`` covering [iova, iova + length)."""
    end = -(-(iova + length) // pgsz) * pgsz
    start = iova // pgsz * pgsz
    return (end - start) // pgsz


def num_pages(addr: int, length: int) -> int:
    """``ib_umem_num_pages``: base pages the kernel pins (and charges to VmPin)."""
    return num_dma_blocks(addr, length, PAGE_SIZE)


@dataclass(frozen=True)
class DeviceCost:
    """What a device with one page size would need for this region."""

    page_size: int
    usable: bool  # the physical layout allows this page size
    blocks: int | None  # DMA blocks (page-table entries in the device), None if unusable


@dataclass(frozen=True)
class Descriptors:
    """The region's cost in kernel and device descriptors."""

    struct_pages: int  # base pages pinned: one struct page reference each
    folios: int  # distinct folios those pages belong to
    layout_max_page_size: int  # largest power of two the physical layout allows
    per_size: tuple[DeviceCost, ...]
    pgsz_bitmap: int
    best_page_size: int  # ib_umem_find_best_pgsz(pgsz_bitmap), 0 = registration fails
    best_blocks: int | None
    rxe_blocks: int  # rxe maps every base page (rxe_mr_init_user: one buf per PAGE_SIZE)

    def to_dict(self) -> dict:
        return {
            "struct_pages": self.struct_pages,
            "folios": self.folios,
            "layout_max_page_size": self.layout_max_page_size,
            "per_size": [{"page_size": c.page_size, "usable": c.usable, "blocks": c.blocks}
                         for c in self.per_size],
            "pgsz_bitmap": self.pgsz_bitmap,
            "best_page_size": self.best_page_size,
            "best_blocks": self.best_blocks,
            "rxe_blocks": self.rxe_blocks,
        }


def describe(addr: int, length: int, pfns: np.ndarray, folios: int,
             pgsz_bitmap: int = DEFAULT_PGSZ_BITMAP,
             sizes: tuple[int, ...] = DEVICE_PAGE_SIZES) -> Descriptors:
    """Descriptor counts for the region whose base pages sit at ``pfns`` (virtual order)."""
    lmask = layout_mask(addr, pfns)
    layout_max = 1 << _ctz(lmask) if lmask else 1 << 63
    per = tuple(
        DeviceCost(s, s <= layout_max and s >= PAGE_SIZE,
                   num_dma_blocks(addr, length, s) if PAGE_SIZE <= s <= layout_max else None)
        for s in sizes)
    best = find_best_pgsz(addr, length, pfns, pgsz_bitmap, lmask=lmask)
    return Descriptors(
        struct_pages=num_pages(addr, length),
        folios=folios,
        layout_max_page_size=layout_max,
        per_size=per,
        pgsz_bitmap=pgsz_bitmap,
        best_page_size=best,
        best_blocks=num_dma_blocks(addr, length, best) if best else None,
        rxe_blocks=num_pages(addr, length),
    )
