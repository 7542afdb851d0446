"""Devices: listing, opening, caps, ports and GIDs agree with sysfs and pyverbs."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
from verbs_util import DEVICE

import rdmapin
from rdmapin.device import format_gid

IB = Path("/sys/class/infiniband")

pytest_plugins = ("verbs_fixtures",)


@pytest.mark.rdma
def test_devices_lists_what_sysfs_has():
    infos = {d.name: d for d in rdmapin.devices()}
    assert set(infos) == {p.name for p in IB.iterdir()}
    for name, info in infos.items():
        assert info.node_guid == (IB / name / "node_guid").read_text().strip()
        assert info.ports == len(list((IB / name / "ports").iterdir()))
        assert info.port_info[0].state == "ACTIVE"


@pytest.mark.rdma
def test_open_first_device_when_none_given():
    first = rdmapin.devices()[0].name
    with rdmapin.open_device() as d:
        assert d.name == first


@pytest.mark.rdma
def test_caps_match_pyverbs(dev):
    from pyverbs.device import Context

    with Context(name=DEVICE) as ctx:
        attr = ctx.query_device()
    caps = dev.caps
    assert caps.max_mr_size == attr.max_mr_size
    assert caps.page_size_cap == attr.page_size_cap
    assert caps.max_mr == attr.max_mr and caps.max_pd == attr.max_pd
    assert caps.phys_port_cnt == attr.phys_port_cnt
    assert 4096 in caps.page_sizes
    assert caps.odp is False  # rxe on 6.1 has no ODP


@pytest.mark.rdma
def test_port_and_gids_match_sysfs_and_pyverbs(dev):
    from pyverbs.device import Context

    port = dev.port(1)
    with Context(name=DEVICE) as ctx:
        vport = ctx.query_port(1)
        gid1 = ctx.query_gid(1, 1).gid
    assert port.state == "ACTIVE"
    assert port.active_mtu == 128 << vport.active_mtu  # enum ibv_mtu 3 -> 1024
    assert port.link_layer == "Ethernet"
    assert format_gid(dev.gid(1, 1)) == gid1
    sysfs = (IB / DEVICE / "ports" / "1" / "gids" / "1").read_text().strip()
    assert f"1:{sysfs}" in port.gids


@pytest.mark.rdma
def test_fork_status_is_reported():
    # ibv_fork_init cannot be undone, so it runs in a child, not in the test process.
    code = ("import rdmapin; a = rdmapin.fork_status(); rdmapin.fork_init(); "
            "print(a, rdmapin.fork_status())")
    before, after = subprocess.run([sys.executable, "-c", code], check=True,
                                   capture_output=True, text=True).stdout.split()
    assert before in ("disabled", "unneeded")
    assert after in ("enabled", "unneeded")
    assert rdmapin.fork_status() == before


@pytest.mark.rdma
def test_close_is_idempotent_and_closed_device_raises():
    d = rdmapin.open_device(DEVICE)
    assert repr(d) == f"<Device {DEVICE}>"
    d.close()
    d.close()
    assert d.closed and repr(d) == f"<Device {DEVICE} closed>"
    with pytest.raises(rdmapin.ClosedError, match="closed"):
        d.alloc_pd()
    with pytest.raises(rdmapin.ClosedError):
        d.port(1)


@pytest.mark.rdma
def test_pds_are_the_open_pds_of_the_device(dev):
    a, b = dev.alloc_pd(), dev.alloc_pd()
    assert dev.pds == [a, b]
    a.close()
    assert dev.pds == [b]
    del b
    gc.collect()
    assert dev.pds == []


@pytest.mark.rdma
def test_open_unknown_device_bad_flow():
    with pytest.raises(rdmapin.NoDeviceError) as ei:
        rdmapin.open_device("nosuchdev0")
    msg = str(ei.value)
    assert "nosuchdev0" in msg and "rxe0" in msg and "rxe1" in msg
    assert ei.value.errno == 19  # ENODEV
