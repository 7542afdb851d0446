"""The pin ledger: long-term pins made while tracing, from the kprobes in bpf/pins.c.

ib_umem_get's entry says a thread is registering [addr, addr+size) (migrations it causes
meanwhile, reason longterm_pin, are that registration's); its return gives the umem pointer
that ib_umem_release later names. From the return until the release the pages are pinned
and stay put, so their PFNs are read from the process's pagemap then: by ``watch``, which
the tracer calls every few tens of ms with the registrations alive in the kernel (the
rp_umem_live map), because the events themselves may be read far too late (the ring is
read in order, and behind a flood of folio failures a TCG guest was ~50 s late, by when a
short-lived MR was released and its pages had moved). A registration ``watch`` missed is
read when its event is. Long-term pins outside RDMA (pin_user_pages*: io_uring, VFIO) are
read the same way by ``watch_pins``, from the kernel's rp_pin_recent.

An MR's keys and device come from the kernel too, at registration (bpf/mrkeys.c: the struct
ib_mr the RDMA core adds on the registering thread): written into the rp_umem_live entry, so
``watch`` gets them with the pages, and sent as an RP_MR_KEYS event, so ``keyed`` gives them
to the owner even when ``watch`` never saw the registration. Only where that probe cannot
attach does ``watch`` ask the kernel's MR list over netlink (``kernel_mrs``), which takes
0.2-0.9 s under TCG and answers nothing once the MR is gone: another process's short-lived
MR could be released first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from rdmapin.kernel import pagemap
from rdmapin.trace.attribution import Owner, OwnerMap, unclaimed_kernel_mr, unclaimed_own_mr

KEYS_RETRY_S = 0.25  # netlink fallback: how often an MR's keys are asked of the kernel until
KEYS_GIVE_UP_S = 5.0  # it lists them, for this long (without CAP_NET_ADMIN it never says them)
EARLY_MAX = 4096     # registrations read ahead whose event has not been read yet


class Keys(NamedTuple):
    """An MR's keys and device as its struct ib_mr held them when the RDMA core added it."""

    lkey: int
    rkey: int
    device: str


class Live(NamedTuple):
    """A registration alive in the kernel now (an rp_umem_live entry)."""

    pid: int
    addr: int
    size: int
    keys: Keys | None = None  # once bpf/mrkeys.c saw its MR added


@dataclass
class Early:
    """A live registration's pages (and MR keys), read before its event was."""

    pid: int
    addr: int
    size: int
    pfns: np.ndarray
    lkey: int | None = None
    device: str | None = None
    rkey: int | None = None
    keys_from: str | None = None
    keys_next: float = 0.0
    keys_until: float = 0.0
    # The owner its event made while the key lookup was still running (the kernel's MR list
    # takes 0.2-0.9 s under TCG): keys found after that go to it too.
    owner: Owner | None = None

    def give(self, o: Owner) -> None:
        """Its keys to ``o``, if known."""
        if self.lkey is not None:
            o.set_keys(self.lkey, self.device, self.keys_from or "netlink", self.rkey)


@dataclass
class Pending:
    """A registration in flight on one thread."""

    owner: Owner
    begun_ns: int


@dataclass
class Ledger:
    owners: OwnerMap
    pending: dict[int, Pending] = field(default_factory=dict)  # tid -> registration
    # umem pointer -> (owner ident, ts_ns of its UMEM_GET event)
    by_umem: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    early: dict[tuple[int, int], Early] = field(default_factory=dict)  # (umem, ts) -> read
    # RP_MR_KEYS events decoded before their UMEM_GET (per-CPU perf buffers), (umem, ts)
    early_keys: dict[tuple[int, int], Keys] = field(default_factory=dict)
    read_ahead: set[tuple[int, int]] = field(default_factory=set)  # live ones, read or used
    early_pins: dict[int, np.ndarray] = field(default_factory=dict)  # pin event ts_ns -> PFNs
    pins_used: set[int] = field(default_factory=set)  # pin events read before watch_pins
    registered: int = 0
    released: int = 0
    failed: int = 0

    def begin(self, tid: int, pid: int, comm: str, addr: int, size: int, ts_ns: int) -> Owner:
        o = Owner(pid=pid, comm=comm, addr=addr, length=size, source="ledger")
        self.pending[tid] = Pending(o, ts_ns)
        return o

    def got(self, tid: int, pid: int, comm: str, addr: int, size: int, umem: int,
            ret: int, ts_ns: int | None = None) -> Owner | None:
        p = self.pending.pop(tid, None)
        if ret < 0:
            self.failed += 1
            return p.owner if p else None
        o = p.owner if p else Owner(pid=pid, comm=comm, addr=addr, length=size, source="ledger")
        o.umem = umem
        e = self.early.pop((umem, ts_ns), None)
        self.read_ahead.add((umem, ts_ns))  # its event came first: watch need not read it
        if e is not None:
            e.give(o)
            if e.lkey is None:
                e.owner = o  # a lookup in flight on the watch thread fills it in
            self.owners.add(o, e.pfns)
        else:
            self.owners.add_range(o)
        k = self.early_keys.pop((umem, ts_ns), None) if ts_ns is not None else None
        if k is not None:
            o.set_keys(k.lkey, k.device, "restrack_add", k.rkey)
        self.by_umem[umem] = (o.ident, ts_ns)
        self.registered += 1
        return o

    def keyed(self, umem: int, get_ts: int, keys: Keys) -> Owner | None:
        """The RDMA core added the MR over ``umem`` (its RP_UMEM_GET event stamped ``get_ts``)
        with these keys: they are its owner's, whatever a netlink match said before."""
        ident, ts = self.by_umem.get(umem, (None, None))
        o = self.owners.owners.get(ident) if ident is not None and ts == get_ts else None
        if o is None:  # its UMEM_GET event is still to come: got() takes them
            if len(self.early_keys) >= EARLY_MAX:  # events lost: forget the oldest
                del self.early_keys[min(self.early_keys, key=lambda k: k[1])]
            self.early_keys[(umem, get_ts)] = keys
            return None
        o.set_keys(keys.lkey, keys.device, "restrack_add", keys.rkey)
        return o

    def release(self, umem: int) -> Owner | None:
        ident, _ts = self.by_umem.pop(umem, (None, None))
        if ident is None:
            return None  # registered before tracing; the inventory's owner stays until exit
        o = self.owners.owners.get(ident)
        self.owners.remove(ident)
        self.released += 1
        return o

    def pinned(self, pid: int, comm: str, start: int, nr_pages: int, page: int,
               ts_ns: int | None = None) -> Owner:
        """A FOLL_LONGTERM pin_user_pages* outside RDMA (io_uring, VFIO), its event stamped
        ``ts_ns``: no release event to pair it with, so it stays in the map for the run."""
        o = Owner(pid=pid, comm=comm, addr=start, length=nr_pages * page,
                  source="pin_user_pages")
        pfns = self.early_pins.pop(ts_ns, None) if ts_ns is not None else None
        if pfns is not None:
            return self.owners.add(o, pfns)
        if ts_ns is not None:
            if len(self.pins_used) >= EARLY_MAX:
                self.pins_used.clear()  # only a pin both here and still unread is re-read
            self.pins_used.add(ts_ns)
        return self.owners.add_range(o)

    def watch_pins(self, recent: dict[int, tuple[int, int, int]], page: int) -> None:
        """Read the pages of the pins in ``recent`` ({event ts_ns: (pid, start, nr_pages)},
        the kernel's rp_pin_recent) now, while they are surely still pinned."""
        for ts_ns, (pid, start, nr_pages) in recent.items():
            if ts_ns in self.pins_used:  # its event came first and read them
                self.pins_used.discard(ts_ns)
                continue
            try:
                pfns = pagemap.pinned_pfns(pagemap.read(pid, start, nr_pages * page))
            except OSError:  # the process is gone: its event reads what it can
                continue
            if len(self.early_pins) >= EARLY_MAX:  # events lost: forget the oldest
                del self.early_pins[min(self.early_pins)]
            self.early_pins[ts_ns] = pfns

    def registering(self, tid: int) -> Owner | None:
        p = self.pending.get(tid)
        return p.owner if p else None

    def keys_wanted(self) -> bool:
        """Some registration read ahead still waits for the kernel to list its MR (the
        netlink fallback: with bpf/mrkeys.c the keys come with a bump of rp_umem_gen)."""
        now = time.monotonic()
        return any(e.lkey is None and now <= e.keys_until for e in self.early.values())

    def watch(self, live: dict[tuple[int, int], Live],
              still_live: Callable[[int, int], bool],
              kernel_mrs: Callable[[int], list] | None = None) -> None:
        """Read the pages of the registrations in ``live`` ({(umem, ts_ns): Live}, the
        kernel's rp_umem_live) not read yet, with the MR keys the kernel wrote there; without
        them (no bpf/mrkeys.c), ask ``kernel_mrs`` until it lists the MR. ``still_live``
        says whether a umem was not released meanwhile (its pages could have moved)."""
        now = time.monotonic()
        self.read_ahead &= live.keys()
        for key, lv in live.items():
            e = self.early.get(key)
            if e is None and key not in self.read_ahead:  # new (not yet read, nor its event)
                try:
                    pfns = pagemap.pinned_pfns(pagemap.read(lv.pid, lv.addr, lv.size))
                except OSError:  # the process is gone: read when the event is, as before
                    continue
                if not still_live(*key):
                    continue
                if len(self.early) >= EARLY_MAX:  # events lost: forget the oldest
                    del self.early[min(self.early, key=lambda k: k[1])]
                e = self.early[key] = Early(lv.pid, lv.addr, lv.size, pfns,
                                            keys_until=now + KEYS_GIVE_UP_S)
                self.read_ahead.add(key)
            if e is None:
                continue
            if lv.keys is not None and e.keys_from != "restrack_add":
                e.lkey, e.rkey, e.device = lv.keys
                e.keys_from = "restrack_add"
                if e.owner is not None:
                    e.give(e.owner)
            elif e.lkey is None and e.keys_next <= now <= e.keys_until:
                e.keys_next = now + KEYS_RETRY_S
                self._keys(e, kernel_mrs)

    def _keys(self, e: Early, kernel_mrs: Callable[[int], list] | None) -> None:
        """The MR over a registration: this process's by address, another's from the
        kernel's MR list by pid and length (the first not taken)."""
        owners = list(self.owners.owners.values())  # the draining thread may be adding one
        taken = {(o.device, o.lkey) for o in owners if o.lkey is not None}
        taken |= {(x.device, x.lkey) for x in self.early.values() if x.lkey is not None}
        if e.pid == os.getpid():
            found = unclaimed_own_mr(e.addr, e.size, taken)
        elif kernel_mrs is None:
            return
        else:
            try:
                mrs = kernel_mrs(e.pid)
            except Exception:  # rdma tool missing or failing: the keys come later or not
                return
            found = unclaimed_kernel_mr(mrs, e.pid, e.size, taken)
        if found is not None and e.lkey is None:  # not the probe's meanwhile
            e.lkey, e.device = found
            e.keys_from = "registry" if e.pid == os.getpid() else "netlink"
            o = e.owner
            if o is not None and o.lkey is None:  # its event was decoded meanwhile
                e.give(o)
