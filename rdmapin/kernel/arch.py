"""Page geometry of this machine, asked of the kernel once (never a literal 4096).

PAGE_SIZE is sysconf's (the kernel's PAGE_SIZE: 4 KiB on x86-64); a PMD maps 512 of them
(2 MiB, the THP and 2 MiB hugetlb size) and a pageblock is pageblock_order pages
(mmzone.pageblock_order() reads the kernel's, HPAGE_PMD_ORDER on x86-64 by default).
"""

from __future__ import annotations

import os

PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")
PAGE_SHIFT: int = PAGE_SIZE.bit_length() - 1
PMD_PAGES: int = 512 if PAGE_SIZE == 4096 else (PAGE_SIZE // 8)  # PTRS_PER_PMD
PMD_SIZE: int = PMD_PAGES * PAGE_SIZE
