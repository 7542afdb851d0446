"""explain_wc: every libibverbs completion status has a name and an explanation; the ones
the pair tests meet say their usual causes. Pure: statuses are numbers."""

from __future__ import annotations

import pytest

import rdmapin
from rdmapin.wc import MEANING, WcStatus, ack_timeout_s, explain_wc, retry_bound_s

pytestmark = pytest.mark.pure


def test_statuses_are_libibverbs_own():
    """Names and numbers as pyverbs (compiled against this libibverbs' verbs.h) has them."""
    import pyverbs.enums as e

    theirs = {n[len("IBV_WC_"):]: int(getattr(e, n)) for n in dir(e)
              if n.startswith("IBV_WC_") and (n.endswith("_ERR") or n in (
                  "IBV_WC_SUCCESS", "IBV_WC_TM_RNDV_INCOMPLETE"))}
    assert theirs == {s.name: s.value for s in WcStatus}


@pytest.mark.parametrize("status", [s for s in WcStatus if s != WcStatus.SUCCESS])
def test_every_error_status_is_named_and_explained(status):
    err = explain_wc(int(status), 0x2a, qp_num=0x11, wr_id=7, opcode="RDMA_WRITE")
    assert isinstance(err, rdmapin.WorkCompletionError)
    assert isinstance(err, rdmapin.RdmapinError)
    assert (err.status, err.status_name, err.vendor_err) == (status, status.name, 0x2a)
    text = str(err)
    assert f"{status.name} (status {int(status)}, vendor_err 0x2a)" in text
    assert "of RDMA_WRITE on QP 0x11 (wr_id 7)" in text
    what, causes = MEANING[status]
    assert what in text and causes in text and err.hint == f"usual causes: {causes}"


def test_the_causes_the_pair_tests_rely_on():
    closed = str(explain_wc(rdmapin.WcStatus.REM_ACCESS_ERR))
    assert "REM_ACCESS_ERR" in closed and "MR was closed" in closed and "rkey" in closed
    gone = str(explain_wc(12))
    assert "RETRY_EXC_ERR" in gone and "peer is gone" in gone and "link" in gone
    assert "first non-flush status" in str(explain_wc(5))


def test_success_and_unknown_statuses():
    with pytest.raises(ValueError, match="IBV_WC_SUCCESS, not an error"):
        explain_wc(0)
    err = explain_wc(99)
    assert err.status == 99 and "status 99" in str(err) and "does not know" in str(err)


def test_retry_bound_from_the_qp_attributes():
    assert ack_timeout_s(0) == pytest.approx(4.096e-6)
    assert ack_timeout_s(14) == pytest.approx(0.0671088640)
    assert retry_bound_s(17, 7) == pytest.approx(8 * 4.096e-6 * 2**17)
    with pytest.raises(ValueError, match="0-31"):
        ack_timeout_s(32)
    with pytest.raises(ValueError, match="0-7"):
        retry_bound_s(14, 8)
