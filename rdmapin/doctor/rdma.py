"""RDMA devices and their ports, as sysfs and iproute2's `rdma link` show them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from rdmapin.doctor import Check, Status, kconfig

IB_CLASS = Path("/sys/class/infiniband")
NET_CLASS = Path("/sys/class/net")
DEV_IB = Path("/dev/infiniband")


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _links() -> dict[tuple[str, int], dict]:
    """`rdma -j link show` keyed by (device, port): the netdev an rxe port sits on."""
    if shutil.which("rdma") is None:
        return {}
    proc = subprocess.run(["rdma", "-j", "link", "show"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    try:
        rows = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {}
    return {(r.get("ifname", ""), int(r.get("port", 0))): r for r in rows if isinstance(r, dict)}


def _kind(dev: Path) -> str:
    """'rxe', 'siw' or the hardware driver's name (mlx5_core, ...)."""
    node_type = _read(dev / "node_type")  # "1: CA", "4: RNIC"
    if "/virtual/" in os.path.realpath(dev):
        return "siw" if "RNIC" in node_type else "rxe"
    driver = dev / "device" / "driver"
    return os.path.basename(os.path.realpath(driver)) if driver.exists() else "hardware"


def _uverbs(dev: Path) -> str | None:
    """/dev/infiniband/uverbsN of this device, if the verbs char device exists."""
    for ent in sorted(Path("/sys/class/infiniband_verbs").glob("uverbs*")):
        if _read(ent / "ibdev") == dev.name:
            return str(DEV_IB / ent.name)
    return None


def _netdevs() -> list[str]:
    try:
        names = sorted(p.name for p in NET_CLASS.iterdir() if p.name != "lo")
    except OSError:
        return []
    return [n for n in names if (NET_CLASS / n / "device").exists()] or names


def _no_device_fix() -> str:
    iface = (_netdevs() or ["IFACE"])[0]
    rxe = (f"modprobe rdma_rxe && rdma link add rxe0 type rxe netdev {iface} "
           "(soft-RoCE over an up Ethernet interface)")
    if kconfig.value("CONFIG_INFINIBAND") == "n":
        return ("this kernel is built without CONFIG_INFINIBAND: run inside the test VM "
                f"(ci/vm/run -- rdmapin doctor), or boot a kernel with rdma_rxe and: {rxe}")
    return f"{rxe}; or run inside the test VM: ci/vm/run -- rdmapin doctor"


def devices() -> Iterator[Check]:
    devs = sorted(IB_CLASS.iterdir()) if IB_CLASS.is_dir() else []
    if not devs:
        yield Check("rdma", Status.FAIL, "no RDMA device (/sys/class/infiniband "
                    + ("is empty)" if IB_CLASS.is_dir() else "missing)"),
                    fix=_no_device_fix(), data={"devices": []})
        return
    links = _links()
    for dev in devs:
        kind = _kind(dev)
        ports = []
        for port_dir in sorted((dev / "ports").glob("*"), key=lambda p: int(p.name)):
            port = int(port_dir.name)
            state = _read(port_dir / "state")  # "4: ACTIVE"
            link = links.get((dev.name, port), {})
            ports.append({"port": port, "state": state.partition(": ")[2] or state,
                          "phys_state": _read(port_dir / "phys_state").partition(": ")[2],
                          "link_layer": _read(port_dir / "link_layer"),
                          "netdev": link.get("netdev")})
        uverbs = _uverbs(dev)
        usable = uverbs is not None and os.access(uverbs, os.R_OK | os.W_OK)
        active = [p for p in ports if p["state"] == "ACTIVE"]
        desc = ", ".join(f"port {p['port']} {p['state']}"
                         + (f" on {p['netdev']}" if p["netdev"] else "") for p in ports)
        data = {"device": dev.name, "kind": kind, "node_type": _read(dev / "node_type"),
                "uverbs": uverbs, "uverbs_rw": usable, "ports": ports}
        value = f"{dev.name} ({kind}): {desc or 'no ports'}"
        if not active:
            fix = (f"bring the port's link up (ip link set {ports[0]['netdev']} up)"
                   if ports and ports[0]["netdev"] else
                   "check the cable/switch, or the netdev under a soft-RoCE device")
            yield Check("rdma", Status.WARN, value, fix=fix, data=data)
        elif not usable:
            yield Check("rdma", Status.FAIL, value + f"; {uverbs or 'no uverbs device'} "
                        "not read-writable", fix="modprobe ib_uverbs; give this user rw on "
                        "/dev/infiniband/uverbs* (udev rule, group rdma)", data=data)
        else:
            yield Check("rdma", Status.PASS, value, data=data)
