"""Which of the core-kernel problems an RDMA host runs into bite on this host.

Each check reads what the kernel exposes (sysfs, procfs, tracefs, netlink through
iproute2) and returns one :class:`Check`: PASS / WARN / FAIL, the measured value, and
the concrete fix. ``run_checks()`` runs them all; a check that cannot read its source
reports that as its value instead of raising, so one broken probe never hides the rest.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Status(enum.IntEnum):
    """Ordered by severity so the worst of a set is ``max()``."""

    PASS = 0
    WARN = 1
    FAIL = 2


@dataclass(frozen=True)
class Check:
    """One verdict: what was measured, what it means, and the fix when it is not PASS."""

    name: str
    status: Status
    value: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status.name, "value": self.value,
                "fix": self.fix, "data": self.data}


CheckFn = Callable[[], Iterable[Check]]


def _registry(try_load: bool = False) -> list[tuple[str, CheckFn]]:
    from rdmapin.doctor import dax, limits, memory, rdma, tracing

    return [
        ("rdma", rdma.devices),
        ("memlock", limits.memlock),
        ("caps", limits.capabilities),
        ("fork", limits.fork),
        ("maps", limits.map_count),
        ("hugetlb", memory.hugetlb),
        ("thp", memory.thp),
        ("frag", memory.fragmentation),
        ("compaction", memory.compaction),
        ("zones", memory.movable_zones),
        ("dax", dax.pmem),
        ("tracing", functools.partial(tracing.readiness, try_load=try_load)),
    ]


def run_checks(only: Iterable[str] | None = None, *, try_load: bool = False) -> list[Check]:
    """Run every check (or the groups named in ``only``) and return the verdicts in order.
    ``try_load`` compiles and attaches the tracer's plan to learn what the kernel refuses
    (tens of seconds under TCG); without it that check says "not tried"."""
    wanted = set(only) if only is not None else None
    out: list[Check] = []
    for group, fn in _registry(try_load):
        if wanted is not None and group not in wanted:
            continue
        try:
            out.extend(fn())
        except OSError as e:  # a probe's own source vanished or is unreadable
            log.debug("check %s: %s", group, e, exc_info=True)
            out.append(Check(group, Status.WARN, f"could not probe: {e}",
                             fix="run as root to read every kernel interface"))
    return out


def groups() -> list[str]:
    return [g for g, _ in _registry()]


def worst(checks: Iterable[Check]) -> Status:
    return max((c.status for c in checks), default=Status.PASS)


__all__ = ["Check", "Status", "groups", "run_checks", "worst"]
