"""RDMA devices: listing, opening, and what a device can do (caps, ports, GIDs).

A Device owns (weakly) the PDs allocated from it; closing it closes them (and so their
MRs) before ibv_close_device, and forgets its context only once that succeeded
(rdmapin.resource).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rdmapin import _lib, explain
from rdmapin.errors import DeviceError, NoDeviceError
from rdmapin.pd import ProtectionDomain
from rdmapin.resource import Resource

# enum ibv_mtu -> bytes
MTU_BYTES = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}
PORT_STATES = {0: "NOP", 1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
LINK_LAYERS = {0: "unspecified", 1: "InfiniBand", 2: "Ethernet"}
# ibv_odp_general_caps / ibv_odp_transport_cap_bits
ODP_SUPPORT = 1 << 0
ODP_SUPPORT_IMPLICIT = 1 << 1


def format_gid(raw: bytes) -> str:
    """16 raw bytes -> 'fe80:0000:...' (the form sysfs and pyverbs print)."""
    h = raw.hex()
    return ":".join(h[i:i + 4] for i in range(0, 32, 4))


@dataclass(frozen=True)
class PortInfo:
    port: int
    state: str
    active_mtu: int  # bytes
    max_mtu: int  # bytes
    link_layer: str
    lid: int
    gid_tbl_len: int
    max_msg_sz: int
    gids: tuple[str, ...] = ()  # non-zero GIDs, index order as (index, gid) strings


@dataclass(frozen=True)
class DeviceCaps:
    """ibv_query_device_ex, the parts registration cares about first."""

    max_mr_size: int
    page_size_cap: int
    max_mr: int
    max_pd: int
    max_qp: int
    max_cq: int
    max_mw: int
    phys_port_cnt: int
    fw_ver: str
    node_guid: int
    vendor_id: int
    vendor_part_id: int
    device_cap_flags: int
    odp: bool  # IBV_ODP_SUPPORT in odp_caps.general_caps
    odp_implicit: bool
    odp_rc_caps: int
    odp_general_caps: int

    @property
    def page_sizes(self) -> list[int]:
        """The MR page sizes the device can map (bits of page_size_cap)."""
        return [1 << b for b in range(64) if self.page_size_cap >> b & 1]


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    node_guid: str
    ports: int
    node_type: int
    transport_type: int
    ibdev_path: str
    port_info: tuple[PortInfo, ...] = field(default=(), repr=False)


def _guid(v: int) -> str:
    h = f"{v:016x}"
    return ":".join(h[i:i + 4] for i in range(0, 16, 4))


def devices() -> list[DeviceInfo]:
    """Every RDMA device of this host, with its ports (empty list when there is none)."""
    out = []
    for raw in _lib.list_devices():
        try:
            with open_device(raw.name) as dev:
                ports = tuple(dev.port(p) for p in range(1, dev.caps.phys_port_cnt + 1))
        except DeviceError:
            ports = ()
        out.append(DeviceInfo(raw.name, _guid(raw.node_guid), len(ports), raw.node_type,
                              raw.transport_type, raw.ibdev_path, ports))
    return out


def open_device(name: str | None = None) -> Device:
    """Open ``name`` (None: the only, or first, device); NoDeviceError says how to get one."""
    try:
        return Device(_lib.open_device(name))
    except NoDeviceError as e:
        names = [d.name for d in _lib.list_devices()]
        raise explain.no_device(name, names, e.errno) from None


class Device(Resource):
    """An open device context (ibv_context): the parent of the PDs allocated from it."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        super().__init__()
        self.name = _lib.context_device_name(ctx)

    def _handle(self) -> Any:
        ctx = self._ctx
        if ctx is None:
            raise self._closed_error()
        return ctx

    # -- lifetime (Resource: close() closes the PDs, then ibv_close_device) ------------
    @property
    def closed(self) -> bool:
        return self._ctx is None

    def _release(self) -> None:
        _lib.close_device(self._ctx)

    def _clear(self) -> None:
        self._ctx = None

    def _describe(self) -> str:
        return f"device {self.name}"

    def __del__(self) -> None:
        self._close_in_finalizer()

    @property
    def pds(self) -> list[ProtectionDomain]:
        """The PDs allocated from this device and still open (closing the device closes
        them first)."""
        return [pd for pd in self._live_children() if isinstance(pd, ProtectionDomain)]

    @cached_property
    def caps(self) -> DeviceCaps:
        c = _lib.query_device(self._handle())
        general = int(c["odp_general_caps"])
        return DeviceCaps(
            max_mr_size=int(c["max_mr_size"]), page_size_cap=int(c["page_size_cap"]),
            max_mr=int(c["max_mr"]), max_pd=int(c["max_pd"]), max_qp=int(c["max_qp"]),
            max_cq=int(c["max_cq"]), max_mw=int(c["max_mw"]),
            phys_port_cnt=int(c["phys_port_cnt"]), fw_ver=str(c["fw_ver"]),
            node_guid=int(c["node_guid"]), vendor_id=int(c["vendor_id"]),
            vendor_part_id=int(c["vendor_part_id"]),
            device_cap_flags=int(c["device_cap_flags"]),
            odp=bool(general & ODP_SUPPORT), odp_implicit=bool(general & ODP_SUPPORT_IMPLICIT),
            odp_rc_caps=int(c["odp_rc_caps"]), odp_general_caps=general)

    def port(self, port: int = 1) -> PortInfo:
        a = _lib.query_port(self._handle(), port)
        gids = []
        for i in range(a["gid_tbl_len"]):
            try:
                g = format_gid(self.gid(port, i))
            except DeviceError:
                break
            if g.replace("0", "").replace(":", ""):
                gids.append(f"{i}:{g}")
        return PortInfo(port=port, state=PORT_STATES.get(a["state"], str(a["state"])),
                        active_mtu=MTU_BYTES.get(a["active_mtu"], 0),
                        max_mtu=MTU_BYTES.get(a["max_mtu"], 0),
                        link_layer=LINK_LAYERS.get(a["link_layer"], str(a["link_layer"])),
                        lid=a["lid"], gid_tbl_len=a["gid_tbl_len"],
                        max_msg_sz=a["max_msg_sz"], gids=tuple(gids))

    def gid(self, port: int = 1, index: int = 0) -> bytes:
        """The raw 16-byte GID at ``index`` of ``port`` (format_gid() for text)."""
        return _lib.query_gid(self._handle(), port, index)

    def alloc_pd(self) -> ProtectionDomain:
        with self._lock:  # not while close() runs: it would miss this PD
            return ProtectionDomain(self, _lib.alloc_pd(self._handle()),
                                    device_name=self.name)

    def __repr__(self) -> str:
        return f"<Device {self.name}{' closed' if self._ctx is None else ''}>"


def fork_init() -> None:
    """ibv_fork_init: make registrations fork-safe. Not needed where the kernel copies
    pinned pages on fork (fork_status() == 'unneeded'), but libibverbs 44 still
    madvise(MADV_DONTFORK)s every registered range once it was called (measured: an unaligned
    range of a hugetlb mapping then fails with EINVAL although the status says 'unneeded')."""
    _lib.fork_init()


def fork_status() -> str:
    """ibv_is_fork_initialized: 'disabled', 'enabled' or 'unneeded'."""
    return {_lib.FORK_DISABLED: "disabled", _lib.FORK_ENABLED: "enabled",
            _lib.FORK_UNNEEDED: "unneeded"}.get(_lib.fork_status(), "unknown")


__all__ = ["Device", "DeviceCaps", "DeviceInfo", "PortInfo", "devices", "fork_init",
           "fork_status", "open_device"]
