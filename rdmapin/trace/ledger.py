"""The pin ledger: long-term pins made while tracing, from the kprobes in bpf/pins.c.

ib_umem_get's entry says a thread is registering [addr, addr+size) (migrations it causes
meanwhile, reason longterm_pin, are that registration's); its return gives the umem pointer
that ib_umem_release later names. At the return the pages are pinned and stay put, so their
PFNs are read from the process's pagemap right then.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rdmapin.trace.attribution import Owner, OwnerMap


@dataclass
class Pending:
    """A registration in flight on one thread."""

    owner: Owner
    begun_ns: int


@dataclass
class Ledger:
    owners: OwnerMap
    pending: dict[int, Pending] = field(default_factory=dict)  # tid -> registration
    by_umem: dict[int, int] = field(default_factory=dict)      # umem pointer -> owner ident
    registered: int = 0
    released: int = 0
    failed: int = 0

    def begin(self, tid: int, pid: int, comm: str, addr: int, size: int, ts_ns: int) -> Owner:
        o = Owner(pid=pid, comm=comm, addr=addr, length=size, source="ledger")
        self.pending[tid] = Pending(o, ts_ns)
        return o

    def got(self, tid: int, pid: int, comm: str, addr: int, size: int, umem: int,
            ret: int) -> Owner | None:
        p = self.pending.pop(tid, None)
        if ret < 0:
            self.failed += 1
            return p.owner if p else None
        o = p.owner if p else Owner(pid=pid, comm=comm, addr=addr, length=size, source="ledger")
        o.umem = umem
        self.owners.add_range(o)
        self.by_umem[umem] = o.ident
        self.registered += 1
        return o

    def release(self, umem: int) -> Owner | None:
        ident = self.by_umem.pop(umem, None)
        if ident is None:
            return None  # registered before tracing; the inventory's owner stays until exit
        o = self.owners.owners.get(ident)
        self.owners.remove(ident)
        self.released += 1
        return o

    def pinned(self, pid: int, comm: str, start: int, nr_pages: int, page: int) -> Owner:
        """A FOLL_LONGTERM pin_user_pages* outside RDMA (io_uring, VFIO): no release event
        to pair it with, so it stays in the map for the run."""
        return self.owners.add_range(Owner(pid=pid, comm=comm, addr=start,
                                           length=nr_pages * page, source="pin_user_pages"))

    def registering(self, tid: int) -> Owner | None:
        p = self.pending.get(tid)
        return p.owner if p else None
