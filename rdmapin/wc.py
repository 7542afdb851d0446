"""Work completions: a failed one's status turned into an error that says what it means.

A completion's status is one number (``ibv_wc.status``, libibverbs' ``enum ibv_wc_status``);
the same few causes are behind most of them, and they are easy to mistake for one another (a
closed remote MR is REM_ACCESS_ERR, a closed remote QP is RETRY_EXC_ERR after the requester's
whole retry budget). ``explain_wc`` names the status and those causes.

    n, wcs = cq.poll()                            # pyverbs
    if wcs[0].status != 0:
        raise rdmapin.explain_wc(wcs[0].status, wcs[0].vendor_err, qp_num=wcs[0].qp_num)

The retry budget of a reliable-connected QP is what bounds how long a requester takes to
notice a dead peer or link: ``retry_bound_s`` computes it from the QP's ``timeout`` and
``retry_cnt`` (InfiniBand spec: local ACK timeout = 4.096 us * 2**timeout).
"""

from __future__ import annotations

import enum

from rdmapin.errors import WorkCompletionError


class WcStatus(enum.IntEnum):
    """libibverbs' enum ibv_wc_status (infiniband/verbs.h), names without IBV_WC_."""

    SUCCESS = 0
    LOC_LEN_ERR = 1
    LOC_QP_OP_ERR = 2
    LOC_EEC_OP_ERR = 3
    LOC_PROT_ERR = 4
    WR_FLUSH_ERR = 5
    MW_BIND_ERR = 6
    BAD_RESP_ERR = 7
    LOC_ACCESS_ERR = 8
    REM_INV_REQ_ERR = 9
    REM_ACCESS_ERR = 10
    REM_OP_ERR = 11
    RETRY_EXC_ERR = 12
    RNR_RETRY_EXC_ERR = 13
    LOC_RDD_VIOL_ERR = 14
    REM_INV_RD_REQ_ERR = 15
    REM_ABORT_ERR = 16
    INV_EECN_ERR = 17
    INV_EEC_STATE_ERR = 18
    FATAL_ERR = 19
    RESP_TIMEOUT_ERR = 20
    GENERAL_ERR = 21
    TM_ERR = 22
    TM_RNDV_INCOMPLETE = 23


_RD_ONLY = ("a reliable-datagram (RD) status, which Linux verbs do not implement",
            "check the device driver: an RC/UC/UD QP should never complete with it")

# status -> (what it means, its usual causes and the fix)
MEANING: dict[WcStatus, tuple[str, str]] = {
    WcStatus.LOC_LEN_ERR: (
        "local length error: a message did not fit the local buffer",
        "a SEND larger than the receive buffer posted for it, or a scatter/gather list longer "
        "than the port's max message size; post receives at least as large as the peer's "
        "sends"),
    WcStatus.LOC_QP_OP_ERR: (
        "local QP operation error: the QP could not execute this work request",
        "an opcode this QP type does not support, inline data above max_inline_data, more "
        "SGEs than max_send_sge, or a QP not yet in RTS when it was posted"),
    WcStatus.LOC_EEC_OP_ERR: _RD_ONLY,
    WcStatus.LOC_PROT_ERR: (
        "local protection error: a local buffer is not covered by a valid MR",
        "the lkey names an MR that was closed (deregistered) before the completion, an MR of "
        "another PD than the QP's, or the SGE's address/length reach outside that MR; a "
        "RECV or RDMA READ target needs Access.LOCAL_WRITE"),
    WcStatus.WR_FLUSH_ERR: (
        "flushed: the QP was already in the error state, so this request never ran",
        "an earlier completion on this QP carries the real error (look for the first "
        "non-flush status); or the QP was moved to ERR on purpose (shutdown); recreate or "
        "reset the QP"),
    WcStatus.MW_BIND_ERR: (
        "memory window bind error",
        "the MR lacks Access.MW_BIND, the window reaches outside the MR, or it asks for an "
        "access the MR does not grant"),
    WcStatus.BAD_RESP_ERR: (
        "bad response: the responder answered with an unexpected transport opcode",
        "a peer QP of another type or in a wrong state; a firmware or driver bug"),
    WcStatus.LOC_ACCESS_ERR: (
        "local access error: an incoming RDMA WRITE with immediate hit a bad local buffer",
        "the receive posted for the immediate names a closed MR or one without LOCAL_WRITE"),
    WcStatus.REM_INV_REQ_ERR: (
        "remote invalid request: the responder's QP refused the request itself",
        "the peer QP's qp_access_flags lack REMOTE_WRITE/REMOTE_READ/REMOTE_ATOMIC for this "
        "opcode, the message exceeds the peer's max message size, or a SEND met a receive "
        "too small on the peer"),
    WcStatus.REM_ACCESS_ERR: (
        "remote access error: the responder refused access to its memory",
        "the peer's MR was closed (deregistered) or never existed under that rkey, the "
        "request's address range reaches outside the MR, the MR lacks REMOTE_WRITE/"
        "REMOTE_READ for this opcode, or it belongs to another PD than the peer QP's; "
        "exchange a fresh (addr, rkey, length) after the peer re-registers"),
    WcStatus.REM_OP_ERR: (
        "remote operation error: the responder could not complete the operation",
        "the receive the peer posted for a SEND is bad (closed MR, too small), or a local "
        "error on the peer's side; its own completions say which"),
    WcStatus.RETRY_EXC_ERR: (
        "transport retry counter exceeded: the responder never acknowledged",
        "the peer is gone (process exited or was killed, QP destroyed or reset), the link "
        "or the peer's port is down, the path is wrong (GID, QP number, PSN), or the ACK "
        "timeout is too short for a slow peer; the wait was timeout * (retry_cnt + 1) "
        "(rdmapin.wc.retry_bound_s): raise timeout/retry_cnt for slow paths"),
    WcStatus.RNR_RETRY_EXC_ERR: (
        "receiver-not-ready retry counter exceeded: the peer had no receive posted",
        "post receives before the peer sends (a SEND or WRITE with immediate consumes one), "
        "or raise rnr_retry (7 retries forever) and min_rnr_timer"),
    WcStatus.LOC_RDD_VIOL_ERR: _RD_ONLY,
    WcStatus.REM_INV_RD_REQ_ERR: _RD_ONLY,
    WcStatus.REM_ABORT_ERR: (
        "remote aborted: the responder aborted the operation",
        "the peer's QP or device failed during it; its completions say why"),
    WcStatus.INV_EECN_ERR: _RD_ONLY,
    WcStatus.INV_EEC_STATE_ERR: _RD_ONLY,
    WcStatus.FATAL_ERR: (
        "fatal error: the device reported a catastrophic error",
        "the device must be reset (driver reload); every QP on it is lost"),
    WcStatus.RESP_TIMEOUT_ERR: _RD_ONLY,
    WcStatus.GENERAL_ERR: (
        "general error: the device gave no specific status",
        "vendor_err says what happened (device specific)"),
    WcStatus.TM_ERR: (
        "tag-matching error",
        "a tag-matching list operation failed on the SRQ (vendor_err says which)"),
    WcStatus.TM_RNDV_INCOMPLETE: (
        "tag-matching rendezvous incomplete",
        "the rendezvous message needs software to finish it (RDMA READ the rest)"),
}


def explain_wc(status: int, vendor_err: int = 0, *, qp_num: int | None = None,
               wr_id: int | None = None, opcode: str | None = None) -> WorkCompletionError:
    """The error for a completion that failed with ``status`` (returned, to be raised).

    ``qp_num``, ``wr_id`` and ``opcode`` (e.g. "RDMA_WRITE") go into the message when given.
    A status of SUCCESS is not an error: ValueError."""
    if status == WcStatus.SUCCESS:
        raise ValueError("explain_wc(0): status 0 is IBV_WC_SUCCESS, not an error")
    try:
        known: WcStatus | None = WcStatus(status)
    except ValueError:
        known = None
    where = "".join([f" of {opcode}" if opcode else "",
                     f" on QP {qp_num:#x}" if qp_num is not None else "",
                     f" (wr_id {wr_id})" if wr_id is not None else ""])
    vendor = f", vendor_err {vendor_err:#x}" if vendor_err else ""
    if known is None:
        return WorkCompletionError(
            status, f"status {status}", vendor_err,
            f"work completion{where} failed with status {status}{vendor}: a status this "
            "rdmapin does not know (libibverbs newer than it?)",
            hint="ibv_wc_status_str() of the installed libibverbs names it")
    what, causes = MEANING[known]
    return WorkCompletionError(
        status, known.name, vendor_err,
        f"work completion{where} failed: {known.name} (status {status}{vendor}): {what}",
        hint=f"usual causes: {causes}")


def ack_timeout_s(timeout: int) -> float:
    """The local ACK timeout a QP attribute ``timeout`` (0-31) stands for, in seconds."""
    if not 0 <= timeout <= 31:
        raise ValueError(f"QP timeout {timeout}: expected 0-31 (4.096 us * 2**timeout)")
    return 4.096e-6 * (1 << timeout)


def retry_bound_s(timeout: int, retry_cnt: int) -> float:
    """How long a requester waits for an ACK before RETRY_EXC_ERR: the first try and
    ``retry_cnt`` retries, each an ACK timeout (devices may round the timeout up). Soft-RoCE
    (rxe) retries forever at retry_cnt 7 (rxe_comp.c counts down only below 7): use 0-6
    for a bound there."""
    if not 0 <= retry_cnt <= 7:
        raise ValueError(f"QP retry_cnt {retry_cnt}: expected 0-7")
    return ack_timeout_s(timeout) * (retry_cnt + 1)
