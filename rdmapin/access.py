"""MR access flags with the verbs names (enum ibv_access_flags of <infiniband/verbs.h>)."""

from __future__ import annotations

import enum


class Access(enum.IntFlag):
    """What the device may do with a registered region; values are IBV_ACCESS_* bits."""

    LOCAL_WRITE = 1 << 0
    REMOTE_WRITE = 1 << 1
    REMOTE_READ = 1 << 2
    REMOTE_ATOMIC = 1 << 3
    MW_BIND = 1 << 4
    ZERO_BASED = 1 << 5
    ON_DEMAND = 1 << 6
    HUGETLB = 1 << 7
    # IBV_ACCESS_OPTIONAL_FIRST: optional flags a device may ignore (sent via reg_mr_iova2).
    RELAXED_ORDERING = 1 << 20

    @classmethod
    def remote(cls) -> Access:
        """The usual target of one-sided RDMA: local write plus remote read and write."""
        return cls.LOCAL_WRITE | cls.REMOTE_WRITE | cls.REMOTE_READ


# ib_access_writable() in the kernel: any of these makes ib_umem_get pin with FOLL_WRITE,
# so the buffer must be writable (a read-only mapping fails with EFAULT).
WRITABLE = int(Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_ATOMIC | Access.MW_BIND)
# Remote write/atomic without local write is refused by ib_check_mr_access() with EINVAL.
NEEDS_LOCAL_WRITE = int(Access.REMOTE_WRITE | Access.REMOTE_ATOMIC)
# IBV_ACCESS_OPTIONAL_RANGE: bits 20..29; libibverbs routes them through ibv_reg_mr_iova2.
OPTIONAL_RANGE = ((1 << 10) - 1) << 20


def describe(access: int) -> str:
    """'LOCAL_WRITE|REMOTE_WRITE' (or '0') for messages and tables."""
    names = [f.name for f in Access if f.name and access & f.value]
    return "|".join(names) if names else "0"
