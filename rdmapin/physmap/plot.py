"""The physical map as a PNG a person reads at a glance: one cell per pageblock, coloured
by its worst page, zones outlined and named, a legend and per-zone totals underneath.

matplotlib is optional (``pip install rdmapin[tools]``); it is imported only here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from rdmapin.errors import RdmapinError
from rdmapin.kernel.arch import PAGE_SIZE
from rdmapin.kernel.units import human
from rdmapin.physmap.blocks import CLASS_NAMES, PhysMap
from rdmapin.physmap.classify import PageClass

COLOURS = {
    PageClass.HOLE: "#ffffff",
    PageClass.FREE: "#a1d99b",
    PageClass.MOVABLE: "#6baed6",
    PageClass.HUGETLB: "#9e9ac8",
    PageClass.NOFLAGS: "#cccccc",
    PageClass.UNMOVABLE: "#fd8d3c",
    PageClass.PINNED: "#d62728",
}
LEGEND = {
    PageClass.HOLE: "hole (not RAM)",
    PageClass.FREE: "free",
    PageClass.MOVABLE: "movable (user pages)",
    PageClass.HUGETLB: "hugetlb",
    PageClass.NOFLAGS: "no page flags (raw kernel / uninitialised)",
    PageClass.UNMOVABLE: "unmovable kernel (slab, page tables, reserved)",
    PageClass.PINNED: "pinned by an MR",
}


def grid_width(nblocks: int) -> int:
    """A power of two giving a grid a little wider than tall."""
    return max(16, 1 << round(math.log2(math.sqrt(4 / 3 * max(nblocks, 1)))))


def zone_outline(first: int, end: int, width: int) -> list[tuple[float, float]]:
    """Polygon around cells [first, end) of a row-major grid (x right, y down)."""
    ra, ca = divmod(first, width)
    rb, cb = divmod(end - 1, width)
    if ra == rb:
        return [(ca, ra), (cb + 1, ra), (cb + 1, ra + 1), (ca, ra + 1), (ca, ra)]
    return [(ca, ra), (width, ra), (width, rb), (cb + 1, rb), (cb + 1, rb + 1),
            (0, rb + 1), (0, ra + 1), (ca, ra + 1), (ca, ra)]


def render(pmap: PhysMap, path: str | os.PathLike, title: str | None = None) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError as e:
        raise RdmapinError(f"--png needs matplotlib ({e})",
                           hint="pip install 'rdmapin[tools]' (or apt-get install "
                                "python3-matplotlib)") from e
    n = len(pmap.block_class)
    width = grid_width(n)
    rows = -(-n // width)
    cells = np.full(rows * width, PageClass.HOLE, dtype=np.uint8)
    cells[:n] = pmap.block_class
    grid = cells.reshape(rows, width)
    block_bytes = pmap.pages_per_block * PAGE_SIZE

    # Layout in inches: title, grid (square cells) with zone names to its right, legend,
    # per-zone table, footnote.
    left, grid_w, right = 0.95, 7.4, 1.6
    cell = grid_w / width
    grid_h = rows * cell
    legend_h = 0.22 * math.ceil(len(PageClass) / 2) + 0.15
    table_h = 0.17 * (len(pmap.summaries) + 1) + 0.1
    heights = [0.55, grid_h, 0.55, legend_h, table_h, 0.35]
    fig_w, fig_h = left + grid_w + right, sum(heights)
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)

    def y_of(i: int) -> float:  # figure fraction at the top of layout band i
        return 1 - sum(heights[:i]) / fig_h

    ax = fig.add_axes((left / fig_w, y_of(2), grid_w / fig_w, grid_h / fig_h))
    cmap = ListedColormap([COLOURS[c] for c in PageClass])
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=len(PageClass) - 1, interpolation="nearest",
              extent=(0, width, rows, 0), aspect="auto")
    ax.set_xlim(0, width)
    ax.set_ylim(rows, 0)
    step = max(1, rows // 12)
    ax.set_yticks(np.arange(0, rows, step) + 0.5)
    ax.set_yticklabels([human(r * width * block_bytes) for r in range(0, rows, step)],
                       fontsize=8)
    ax.set_xticks([0, width // 2, width])
    ax.set_xticklabels(["+0", f"+{human(width // 2 * block_bytes)}",
                        f"+{human(width * block_bytes)}"], fontsize=8)
    ax.set_xlabel(f"one cell = one {human(block_bytes)} pageblock, {width} per row",
                  fontsize=8.5)
    ax.set_ylabel("physical address", fontsize=9)

    # Zones: outlined on the grid, named in the right margin (spread so names never meet).
    min_gap = 0.16 / cell
    last_y = -math.inf
    for i, s in enumerate(pmap.summaries):
        idx = np.flatnonzero(pmap.block_zone == i)
        if not len(idx):
            continue
        poly = zone_outline(int(idx[0]), int(idx[-1]) + 1, width)
        xs, ys = zip(*poly, strict=True)
        ax.plot(xs, ys, color="black", linewidth=1.3)
        r = int(idx[0]) // width
        label_y = max(r + 0.5, last_y + min_gap)
        last_y = label_y
        ax.annotate(f"{s.zone.label} ({human(s.zone.spanned * PAGE_SIZE)})", xy=(width, r + 0.5),
                    xytext=(width + 0.15 / cell, label_y), fontsize=7.5, va="center",
                    annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": "0.45", "linewidth": 0.6})

    totals = np.bincount(pmap.block_class, minlength=len(PageClass))
    handles = [Patch(facecolor=COLOURS[c], edgecolor="0.5",
                     label=f"{LEGEND[c]}: {totals[c]}") for c in PageClass]
    fig.legend(handles=handles, loc="upper left", ncol=2, fontsize=7.5, frameon=False,
               bbox_to_anchor=(left / fig_w - 0.01, y_of(3)), columnspacing=1.5,
               title="pageblocks, coloured by their worst page", title_fontsize=8,
               alignment="left")

    head = (f"{'ZONE':<11}{'BLOCKS':>7}{'FREE':>7}{'MOVBL':>7}{'HUGE':>6}{'NOFLG':>7}"
            f"{'UNMOV':>7}{'PINND':>7}{'2M-NOW':>8}{'2M-MAX':>8}{'LOST':>6}")
    lines = [head]
    for s in pmap.summaries:
        b = s.pageblocks
        lines.append(f"{s.zone.label:<11}{sum(b.values()):>7}{b['free']:>7}{b['movable']:>7}"
                     f"{b['hugetlb']:>6}{b['noflags']:>7}{b['unmovable']:>7}{b['pinned']:>7}"
                     f"{s.free_2m:>8}{s.formable_2m:>8}{s.lost_to_pins:>6}")
    fig.text(left / fig_w, y_of(4), "\n".join(lines), family="monospace", fontsize=7.5,
             va="top")
    fig.text(left / fig_w, y_of(5) - 0.05 / fig_h,
             "2M-NOW: pageblocks free now.  2M-MAX: 2 MiB pages if every movable page "
             "moved.  LOST: pageblocks that only pinned pages keep from compaction.",
             fontsize=6.5, color="0.3", va="top")
    t = pmap.totals()
    fig.text(left / fig_w, 1 - 0.18 / fig_h,
             title or (f"Physical memory: {t['pageblocks']} pageblocks of "
                       f"{human(block_bytes)}; {t['pinned_pages']} pinned pages in "
                       f"{t['pinned_blocks']} pageblocks"), fontsize=11, va="top")
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


__all__ = ["CLASS_NAMES", "COLOURS", "grid_width", "render", "zone_outline"]
