"""Parsing the kernel's MR tracking as iproute2 prints it (the line below was printed by
`rdma -j -d res show mr` in the Debian 6.1 guest), and its absence on the host."""

from __future__ import annotations

from rdmapin.kernel import rdma_res

GUEST_61 = ('[{"ifindex":0,"ifname":"rxe0","mrn":0,"rkey":"0","lkey":"201","mrlen":1048576,'
            '"pdn":1,"pid":301,"comm":"python"}]')


def test_parse_61_output_keys_are_hex():
    (mr,) = rdma_res.parse(GUEST_61)
    assert (mr.device, mr.mrn, mr.length, mr.pdn, mr.pid, mr.comm) == (
        "rxe0", 0, 1 << 20, 1, 301, "python")
    assert (mr.lkey, mr.rkey, mr.iova) == (0x201, 0, None)


def test_parse_skips_non_mr_rows_and_empty_output():
    assert rdma_res.parse("") == []
    assert rdma_res.parse('[{"ifname":"rxe0","pdn":1}]') == []


def test_mrs_without_devices_is_empty_with_reason():
    why = rdma_res.available()
    if why is not None:
        assert rdma_res.mrs() == []
        assert "RDMA" in why or "rdma" in why
